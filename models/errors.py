"""Typed errors raised by the OCR engine.

The HTTP layer maps ``ImageError.code`` straight onto its error payload, so
the codes are part of the public contract and must not change.
"""

from __future__ import annotations


class ImageError(Exception):
    """Base class for problems with the *input* image (client errors)."""

    code: str = "bad_image"


class ImageDecodeError(ImageError):
    """Empty, truncated, corrupt or not-an-image bytes, or an unsupported format."""

    code = "unsupported_image"


class ImageTooLargeError(ImageError):
    """The header declares more pixels than ``max_image_pixels``."""

    code = "image_too_large"


class ImageTooSmallError(ImageError):
    """Either side is below ``min_image_side`` pixels."""

    code = "image_too_small"


class ModelLoadError(Exception):
    """A model or dictionary file is missing, unreadable or incompatible."""


class DocumentEncryptedError(ImageError):
    """A PDF that needs a password (or a security handler PDFium does not support)."""

    code = "encrypted_document"


class DocumentCorruptError(ImageError):
    """A PDF (or one of its pages) that cannot be parsed."""

    code = "corrupt_document"


class TooManyPagesError(ImageError):
    """More pages than ``max_pdf_pages``."""

    code = "too_many_pages"


class PageTooLargeError(ImageError):
    """A page whose media box is beyond any real paper (a page bomb)."""

    code = "page_too_large"


class TextLayerTooLargeError(ImageError):
    """A PDF page whose text layer holds more than a page's worth of text (a layer bomb)."""

    code = "text_layer_too_large"


class PasswordRequiredError(ImageError):
    """A password-protected PDF sent without its password."""

    code = "pdf_password_required"


class PasswordWrongError(ImageError):
    """A password-protected PDF sent with a password that does not open it."""

    code = "pdf_password_wrong"
