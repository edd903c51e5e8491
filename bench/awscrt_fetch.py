"""The awscrt candidate for the native core, as a benchmark contender: the AWS Common
Runtime's S3 client (what boto3's CRT transfer manager uses) downloading a prefix.

    python bench/awscrt_fetch.py BUCKET PREFIX DEST      (endpoint and keys from AWS_*)

Listing with the bootstrap's own lister (so only the GETs differ), then one
``GET_OBJECT`` meta-request per object written straight to its file by the CRT
(it splits large objects into ranged parts itself), all in flight at once: the
CRT's own scheduler bounds connections. No MD5 check: an upper bound, not a design.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

started = time.perf_counter()
from awscrt.auth import AwsCredentialsProvider  # noqa: E402
from awscrt.http import HttpHeaders, HttpRequest  # noqa: E402
from awscrt.io import ClientBootstrap, DefaultHostResolver, EventLoopGroup  # noqa: E402
from awscrt.s3 import S3Client, S3RequestTlsMode, S3RequestType  # noqa: E402

imported = time.perf_counter()
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bootstrap.config.settings import load_transfer  # noqa: E402
from bootstrap.config.storage import resolve_endpoint  # noqa: E402
from bootstrap.storage.base import credentials  # noqa: E402
from bootstrap.storage.signed import SignedClient  # noqa: E402


def main() -> int:
    bucket, prefix, dest = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    endpoint = resolve_endpoint(os.environ, "path")
    creds = credentials(load_transfer(os.environ))
    lister = SignedClient(endpoint, creds, 10, 30)
    keys, token = [], None
    while True:
        items, token = lister.page(bucket, prefix, token)
        keys += [k for k, _, _ in items if not k.endswith("/")]
        if token is None:
            break
    elg = EventLoopGroup()
    client = S3Client(bootstrap=ClientBootstrap(elg, DefaultHostResolver(elg)),
                      region=endpoint.region, tls_mode=S3RequestTlsMode.DISABLED,
                      credential_provider=AwsCredentialsProvider.new_static(
                          creds.access_key, creds.secret_key),
                      throughput_target_gbps=10.0, part_size=16 * 2**20)
    host = urlsplit(endpoint.effective_url).netloc
    requests = []
    for key in keys:
        target = dest / key[len(prefix):]
        target.parent.mkdir(parents=True, exist_ok=True)
        request = HttpRequest("GET", f"/{bucket}/{key}",
                              HttpHeaders([("Host", host), ("Content-Length", "0")]))
        requests.append(client.make_request(type=S3RequestType.GET_OBJECT, request=request,
                                            recv_filepath=str(target)))
    for r in requests:
        r.finished_future.result()
    print(f"awscrt: {len(keys)} objects, import {1000 * (imported - started):.0f} ms",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
