"""S3's XML answers as the signed client reads them (expat itself, not ElementTree): the
root's name, its children's texts, each record's fields; what is not XML is refused."""

from __future__ import annotations

import pytest

from bootstrap.storage.signed import _error, _xml

LISTING = b"""<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Name>bkt</Name><Prefix>code/</Prefix><IsTruncated>true</IsTruncated>
  <NextContinuationToken>tok&amp;en==</NextContinuationToken>
  <Contents><Key>code/a &amp; b&lt;1&gt;.py</Key><Size>12</Size>
    <ETag>&quot;0123456789abcdef0123456789abcdef&quot;</ETag>
    <Owner><ID>owner-id</ID></Owner><StorageClass>STANDARD</StorageClass></Contents>
  <Contents><Key>code/\xe4\xbd\xa0\xe5\xa5\xbd.txt</Key><Size>0</Size><ETag>"x-2"</ETag></Contents>
</ListBucketResult>"""


def test_a_listing_page_reads_as_its_fields_and_records() -> None:
    root, fields, contents = _xml(LISTING, "Contents")
    assert root == "ListBucketResult"
    assert fields["IsTruncated"] == "true"
    assert fields["NextContinuationToken"] == "tok&en=="  # entities decoded
    assert [c["Key"] for c in contents] == ["code/a & b<1>.py", "code/\u4f60\u597d.txt"]
    assert contents[0]["Size"] == "12" and contents[0]["ETag"].strip('"').startswith("0123")
    assert "ID" not in contents[0]  # a record's nested elements are not its fields


def test_namespace_prefixes_are_dropped() -> None:
    body = (b'<s3:ListMultipartUploadsResult xmlns:s3="http://s3.amazonaws.com/doc/2006-03-01/">'
            b"<s3:Upload><s3:Key>k</s3:Key><s3:UploadId>u1</s3:UploadId></s3:Upload>"
            b"</s3:ListMultipartUploadsResult>")
    root, _, uploads = _xml(body, "Upload")
    assert root == "ListMultipartUploadsResult" and uploads == [{"Key": "k", "UploadId": "u1"}]


@pytest.mark.parametrize("body", [b"", b"<html><body>proxy error", b"not xml at all",
                                  b"<a></b>"])
def test_what_is_not_xml_is_refused(body: bytes) -> None:
    with pytest.raises(ValueError):
        _xml(body, "Contents")


def test_an_error_answer_gives_its_code_and_message() -> None:
    err = _error(503, b"<Error><Code>SlowDown</Code><Message>Please reduce</Message></Error>",
                 "GetObject")
    assert (err.kind, err.status, err.code, err.message) == ("http", 503, "SlowDown",
                                                            "Please reduce")
    html = _error(502, b"<html>Bad Gateway", "GetObject")
    assert (html.kind, html.code) == ("http", "502")
