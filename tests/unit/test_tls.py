"""Where the runtime finds the system's CA bundle (storage/tls.py): the first of the
distributions' layouts that exists, on Debian/Ubuntu and RHEL/EulerOS trees alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from bootstrap.storage import tls


@pytest.mark.parametrize("layout", ["etc/ssl/certs/ca-certificates.crt",
                                    "etc/pki/tls/certs/ca-bundle.crt",
                                    "etc/ssl/ca-bundle.pem"])
def test_the_bundle_is_found_on_each_layout(tmp_path: Path, layout: str) -> None:
    tls.system_cafile.cache_clear()
    (tmp_path / layout).parent.mkdir(parents=True)
    (tmp_path / layout).write_text("-----BEGIN CERTIFICATE-----\n")
    assert tls.system_cafile(str(tmp_path)) == str(tmp_path / layout)


def test_no_bundle_anywhere_leaves_the_interpreters_defaults(tmp_path: Path) -> None:
    tls.system_cafile.cache_clear()
    assert tls.system_cafile(str(tmp_path)) is None
    tls.system_cafile.cache_clear()
