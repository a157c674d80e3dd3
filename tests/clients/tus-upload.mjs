// Upload one file with the real tus-js-client (npm), as browsers and Node apps do.
// usage: node tus-upload.mjs ENDPOINT TOKEN FILE NAME CHUNK_SIZE
//   CHUNK_SIZE 0: one PATCH for the whole file.
// Prints {"url": ..., "bytes": ...} on success; retries for ~60 s when the server goes away.
import fs from "node:fs";
import { createRequire } from "node:module";

const require = createRequire(process.env.FMS_TEST_NODE_PATH + "/");
const tus = require("tus-js-client");

const [endpoint, token, file, name, chunk] = process.argv.slice(2);
const size = fs.statSync(file).size;
const chunkSize = Number(chunk) > 0 ? Number(chunk) : Infinity;
const input = chunkSize === Infinity ? fs.readFileSync(file) : fs.createReadStream(file);

const upload = new tus.Upload(input, {
  endpoint,
  chunkSize,
  uploadSize: size,
  headers: { Authorization: `Bearer ${token}` },
  metadata: { filename: name, filetype: "application/octet-stream" },
  retryDelays: [100, 300, 500, 1000, 1000, 2000, 2000, 3000, 3000, 5000, 5000, 5000, 10000, 10000, 10000],
  onProgress(sent) {
    if (process.env.FMS_TUS_PROGRESS) process.stderr.write(`progress ${sent}\n`);
  },
  onError(err) {
    console.error(`upload failed: ${err}`);
    process.exit(1);
  },
  onSuccess() {
    console.log(JSON.stringify({ url: upload.url, bytes: size }));
  },
});
upload.start();
