// The tus project's own server (npm @tus/server + @tus/file-store), for comparing protocol
// behaviour with ours: `node tus-node-server.mjs PORT DIR` (FMS_TUS_NODE: its node_modules).
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";

const require = createRequire(process.env.FMS_TUS_NODE + "/");
const { Server } = await import(pathToFileURL(require.resolve("@tus/server")).href);
const { FileStore } = await import(pathToFileURL(require.resolve("@tus/file-store")).href);

const [port, dir] = process.argv.slice(2);
const server = new Server({
  path: "/files",
  datastore: new FileStore({ directory: dir, expirationPeriodInMilliseconds: 3600_000 }),
  maxSize: 64 * 1024 * 1024,
});
server.listen({ host: "127.0.0.1", port: Number(port) }, () => console.log("listening"));
