"""The baseline: a plain boto3 thread pool (list, then get_object per key, 32 threads)."""

import os
import sys
from concurrent.futures import ThreadPoolExecutor

import boto3
from botocore.config import Config

bucket, prefix, dest = sys.argv[1], sys.argv[2], sys.argv[3]
client = boto3.client("s3", config=Config(max_pool_connections=32,
                                          s3={"addressing_style": "path"}))
keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(
    Bucket=bucket, Prefix=prefix) for o in page.get("Contents", [])]


def get(key: str) -> None:
    path = os.path.join(dest, key[len(prefix):])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    with open(path, "wb") as fh:
        for chunk in iter(lambda: body.read(1 << 20), b""):
            fh.write(chunk)


with ThreadPoolExecutor(32) as pool:
    list(pool.map(get, keys))
