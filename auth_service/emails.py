"""One mailbox, one account: the key an email address is unique under.

An address is checked and normalised by `email-validator` (RFC 5321/6531 syntax, the
domain mapped by IDNA UTS #46 and written as ASCII, NFC on the local part, invisible and
other unsafe characters refused, a quoted local part refused, a domain without a dot or
under a special-use name refused). On top of that, the key:

- lower-cases the local part, after NFKC (fullwidth `ｉｄｎ` is `idn`) where NFKC leaves a
  valid address (otherwise the address is refused: its compatibility form would be
  another address);
- refuses a local part or a domain label that mixes Latin with Greek or Cyrillic letters
  (`pаypal` with a Cyrillic `а`), the confusable spoofs that look like another mailbox.

So `idn@bücher.de` and `idn@xn--bcher-kva.de` are one key, as are `a@ｅｘａｍｐｌｅ.com` and
`a@example.com`. The address as typed is what the account shows.
"""

from __future__ import annotations

import unicodedata

from email_validator import EmailNotValidError, validate_email

MAX_LENGTH = 254

# Scripts whose letters are drawn alike: one label mixing them reads as another name.
_CONFUSABLE_SCRIPTS = frozenset({"LATIN", "GREEK", "CYRILLIC"})


class EmailNotAccepted(ValueError):
    """Not an address this service accepts; the message says why, for the client."""


def _script(char: str) -> str | None:
    if not char.isalpha():
        return None
    name = unicodedata.name(char, "")
    return name.split(" ", 1)[0] if name else None


def _mixes_confusable_scripts(text: str) -> bool:
    scripts = {_script(char) for char in text} & _CONFUSABLE_SCRIPTS
    return len(scripts) > 1


def _validated(address: str) -> tuple[str, str, str]:
    """(local part, Unicode domain, ASCII domain) of a valid address."""
    try:
        checked = validate_email(
            address,
            check_deliverability=False,  # no DNS on a request path
            allow_quoted_local=False,
            allow_domain_literal=False,
            allow_display_name=False,
        )
    except EmailNotValidError as exc:
        raise EmailNotAccepted(str(exc)) from None
    return checked.local_part, checked.domain, checked.ascii_domain


def email_key(address: str) -> str:
    """The key of the mailbox `address` names, or EmailNotAccepted saying why not."""
    local, domain, ascii_domain = _validated(address)
    if _mixes_confusable_scripts(local) or any(
        _mixes_confusable_scripts(label) for label in domain.split(".")
    ):
        raise EmailNotAccepted(
            "The email address mixes Latin letters with Greek or Cyrillic ones that look alike."
        )
    compatible = unicodedata.normalize("NFKC", local)
    if compatible != local:
        try:
            local, _, _ = _validated(f"{compatible}@{ascii_domain}")
        except EmailNotAccepted:
            raise EmailNotAccepted(
                "The part before the @-sign has characters whose plain form is not valid."
            ) from None
    key = f"{local.lower()}@{ascii_domain.lower()}"
    if len(key) > MAX_LENGTH:
        raise EmailNotAccepted(f"The email address is longer than {MAX_LENGTH} characters.")
    return key
