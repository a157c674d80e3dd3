"""Upload one file with the real tuspy client (PyPI), as Python pipelines do.

usage: python tus_upload.py ENDPOINT TOKEN FILE NAME CHUNK_SIZE
  CHUNK_SIZE 0: tuspy's default chunk size.
Prints {"url": ..., "bytes": ...} on success.
"""
import json
import os
import sys

from tusclient import client

endpoint, token, path, name, chunk = sys.argv[1:6]
c = client.TusClient(endpoint, headers={"Authorization": f"Bearer {token}"})
kwargs = {"metadata": {"filename": name}, "retries": 30, "retry_delay": 1}
if int(chunk) > 0:
    kwargs["chunk_size"] = int(chunk)
uploader = c.uploader(path, **kwargs)
uploader.upload()
print(json.dumps({"url": uploader.url, "bytes": os.path.getsize(path)}))
