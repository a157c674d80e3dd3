// The tus conformance cases of docs/design/tus-conformance.md, run against any tus server:
// `node tus-conformance.mjs ENDPOINT [TOKEN]` (ENDPOINT: the creation URL, e.g.
// http://127.0.0.1:8080/api/uploads). Prints one line per case: name, status(es) seen.
import { createHash } from "node:crypto";

const [endpoint, token] = process.argv.slice(2);
const base = new URL(endpoint);
const auth = token ? { authorization: `Bearer ${token}` } : {};
const V = { "tus-resumable": "1.0.0" };
const OCT = { "content-type": "application/offset+octet-stream" };
const b64 = (s) => Buffer.from(s).toString("base64");

async function req(method, url, headers = {}, body) {
  const r = await fetch(url, { method, headers: { ...auth, ...headers }, body });
  await r.arrayBuffer().catch(() => {});
  return r;
}
async function create(headers = {}) {
  const r = await req("POST", endpoint, { ...V, ...headers });
  const loc = r.headers.get("location");
  return { r, url: loc ? new URL(loc, base).href : null };
}
const results = [];
const show = (name, got) => {
  results.push({ name, got });
  console.log(`${name}\t${got}`);
};

let r = await req("OPTIONS", endpoint);
show("OPTIONS", `${r.status} version=${r.headers.get("tus-version")} ext=${r.headers.get("tus-extension")} max=${r.headers.get("tus-max-size")} checksum=${r.headers.get("tus-checksum-algorithm")}`);
r = await req("POST", endpoint, { "upload-length": "10" });
show("POST without Tus-Resumable", `${r.status} tus-version=${r.headers.get("tus-version")}`);
r = await req("POST", endpoint, { "tus-resumable": "0.2.2", "upload-length": "10" });
show("POST with Tus-Resumable 0.2.2", r.status);
r = await req("POST", endpoint, { ...V, "upload-length": "-1" });
show("POST Upload-Length -1", r.status);
r = await req("POST", endpoint, { ...V });
show("POST without any length", r.status);
r = await req("POST", endpoint, { ...V, "upload-length": "10", "upload-defer-length": "1" });
show("POST with both lengths", r.status);
r = await req("POST", endpoint, { ...V, "upload-length": String(65 * 1024 * 1024) });
show("POST over max size", r.status);
r = await req("POST", endpoint, { ...V, "upload-length": "10", "upload-metadata": "filename !!!" });
show("POST bad metadata base64", r.status);
r = await req("POST", endpoint, { ...V, "upload-length": "10", "upload-metadata": `filename ${b64("../../etc/passwd")}` });
show("POST path-like filename", r.status);

let { r: c, url } = await create({ "upload-length": "10", "upload-metadata": `filename ${b64("a.txt")}` });
show("POST valid", `${c.status} location=${url ? "yes" : "no"} expires=${c.headers.get("upload-expires") ? "yes" : "no"}`);
r = await req("HEAD", url, V);
show("HEAD new", `${r.status} offset=${r.headers.get("upload-offset")} length=${r.headers.get("upload-length")} cache=${r.headers.get("cache-control")}`);
r = await req("HEAD", url);
show("HEAD without Tus-Resumable", r.status);
r = await req("PATCH", url, { ...V, "content-type": "application/octet-stream", "upload-offset": "0" }, Buffer.alloc(3));
show("PATCH wrong content type", r.status);
r = await req("PATCH", url, { ...V, ...OCT }, Buffer.alloc(3));
show("PATCH without Upload-Offset", r.status);
r = await req("PATCH", url, { ...V, ...OCT, "upload-offset": "x" }, Buffer.alloc(3));
show("PATCH Upload-Offset x", r.status);
r = await req("PATCH", url, { ...V, ...OCT, "upload-offset": "5" }, Buffer.alloc(3));
show("PATCH wrong offset", r.status);
r = await req("PATCH", url, { ...V, ...OCT, "upload-offset": "0", "upload-checksum": `sha1 ${createHash("sha1").update("xyz").digest("base64")}` }, Buffer.from("abc"));
show("PATCH sha1 mismatch", r.status);
r = await req("HEAD", url, V);
show("HEAD after mismatch", `offset=${r.headers.get("upload-offset")}`);
r = await req("PATCH", url, { ...V, ...OCT, "upload-offset": "0", "upload-checksum": "crc32 AAAAAA==" }, Buffer.from("abc"));
show("PATCH unknown checksum algorithm", r.status);
r = await req("PATCH", url, { ...V, ...OCT, "upload-offset": "0", "upload-checksum": `md5 ${createHash("md5").update("abc").digest("base64")}` }, Buffer.from("abc"));
show("PATCH md5 ok", `${r.status} offset=${r.headers.get("upload-offset")}`);
r = await req("PATCH", url, { ...V, ...OCT, "upload-offset": "3" }, Buffer.alloc(8));
show("PATCH past Upload-Length", r.status);
r = await req("HEAD", url, V);
show("HEAD after too-long PATCH", `offset=${r.headers.get("upload-offset")}`);
r = await req("PATCH", url, { ...V, ...OCT, "upload-offset": "3" }, Buffer.alloc(7));
show("PATCH to the end", `${r.status} offset=${r.headers.get("upload-offset")}`);
r = await req("PATCH", url, { ...V, ...OCT, "upload-offset": "10" }, Buffer.alloc(0));
show("PATCH after completion, empty", r.status);
r = await req("PATCH", url, { ...V, ...OCT, "upload-offset": "10" }, Buffer.alloc(1));
show("PATCH after completion, 1 byte", r.status);

({ r: c, url } = await create({ "upload-defer-length": "1" }));
r = await req("HEAD", url, V);
show("deferred: HEAD", `${c.status} defer=${r.headers.get("upload-defer-length")}`);
r = await req("PATCH", url, { ...V, ...OCT, "upload-offset": "0", "upload-length": "4" }, Buffer.alloc(4));
show("deferred: PATCH with Upload-Length", `${r.status} offset=${r.headers.get("upload-offset")}`);

({ r: c, url } = await create({ "upload-length": "0" }));
r = await req("HEAD", url, V);
show("empty upload", `${c.status} offset=${r.headers.get("upload-offset")}`);

r = await req("POST", endpoint, { ...V, ...OCT, "upload-length": "6" }, Buffer.from("abc"));
show("creation-with-upload", `${r.status} offset=${r.headers.get("upload-offset")}`);

({ r: c, url } = await create({ "upload-length": "10" }));
r = await req("DELETE", url, V);
show("termination", r.status);
r = await req("HEAD", url, V);
show("HEAD after termination", r.status);

const parts = [];
for (const s of ["abc", "def"]) {
  const { r: pr, url: u } = await create({ "upload-length": "3", "upload-concat": "partial" });
  if (!u) {
    show("concatenation partial", pr.status);
    break;
  }
  await req("PATCH", u, { ...V, ...OCT, "upload-offset": "0" }, Buffer.from(s));
  parts.push(new URL(u).pathname);
}
if (parts.length === 2) {
  r = await req("POST", endpoint, { ...V, "upload-concat": `final;${parts.join(" ")}` });
  const fin = r.headers.get("location");
  const h = fin ? await req("HEAD", new URL(fin, base).href, V) : null;
  show("concatenation final", `${r.status} offset=${h ? h.headers.get("upload-offset") : "-"} concat=${h ? h.headers.get("upload-concat") : "-"}`);
}
r = await req("HEAD", new URL("../../etc/passwd", endpoint + "/").href, V);
show("HEAD traversal-looking id", r.status);
r = await req("HEAD", `${endpoint}/${"a".repeat(4096)}`, V);
show("HEAD 4 KiB id", r.status);
