"""The native engine's error translation: the library's failures in the one error
model; a bug of ours never dressed up as a network or TLS failure."""

from __future__ import annotations

import obstore
import obstore.exceptions
import pytest

from bootstrap.errors import ConfigError
from bootstrap.storage.errors import StorageError
from bootstrap.storage.native import translate


def test_a_programming_error_is_raised_as_it_is() -> None:
    # Before: "kept dropping the connection" (kind io) for an AttributeError of ours.
    with pytest.raises(AttributeError, match="no attribute 'get_rnage'"):
        translate(AttributeError("'Store' object has no attribute 'get_rnage'"), "GetObject")
    with pytest.raises(TypeError):
        translate(TypeError("get() takes 2 positional arguments"), "GetObject")


def test_an_option_this_obstore_does_not_know_names_the_version() -> None:
    # Before: "certificate not trusted" (the key's name matched the TLS pattern).
    with pytest.raises(ConfigError, match=f"obstore {obstore.__version__} does not know the "
                                          "option 'root_certificate'"):
        translate(ValueError("Invalid key: root_certificate."), "configure")


def test_the_librarys_own_failures_are_translated() -> None:
    error = translate(obstore.exceptions.GenericError(
        "Generic S3 error: Error performing GET http://127.0.0.1:9/b/k - HTTP error: "
        "error sending request: Connection refused"), "GetObject")
    assert isinstance(error, StorageError) and error.kind == "connect"
    error = translate(obstore.exceptions.GenericError(
        "Generic S3 error: invalid peer certificate: UnknownIssuer"), "GetObject")
    assert error.kind == "tls" and "UnknownIssuer" in error.message
