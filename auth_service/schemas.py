"""Bodies of the auth API: requests, validated with every rule of the contract, and the
success answers (which its OpenAPI document describes)."""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from auth_service.emails import EmailNotAccepted, email_key
from auth_service.passwords import MAX_LENGTH, MIN_LENGTH, password_problems
from shared.http.apidocs import AnswerSchema
from shared.messaging.pipeline import (
    MAX_STYLE_ID,
    REJECTION_REASONS,
    ROLES,
    StrictInteger,
    distinct_values,
)

GENDERS = ("MALE", "FEMALE", "OTHER")
# \Z, not $: `$` also matches before a trailing newline.
PHONE = r"\+?[0-9]+(-[0-9]+)*\Z"
ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")


def _encodable(value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError("Not valid Unicode text (unpaired surrogate).") from None


class Password(fields.String):
    """Any characters at all, as long as they are real Unicode (they are hashed as UTF-8)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text: str = super()._deserialize(value, attr, data, **kwargs)
        _encodable(text)
        return text


class Text(fields.String):
    """Printable text: real Unicode without control characters (no NUL, no newline)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text: str = super()._deserialize(value, attr, data, **kwargs)
        _encodable(text)
        if any(unicodedata.category(char) == "Cc" for char in text):
            raise ValidationError("Must not contain control characters.")
        return text


class Email(Text):
    """An email address that names one mailbox (see auth_service/emails.py), kept as typed."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("metadata", {})
        kwargs["metadata"] = {"format": "email", **kwargs["metadata"]}
        super().__init__(**kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text: str = super()._deserialize(value, attr, data, **kwargs)
        try:
            email_key(text)
        except EmailNotAccepted as exc:
            raise ValidationError(str(exc)) from None
        return text


class IsoDate(fields.Date):
    """Exactly `YYYY-MM-DD` (strptime alone would take `1995-4-7`)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> dt.date:
        if isinstance(value, str) and not ISO_DATE.match(value):
            raise ValidationError("Not a valid date: use YYYY-MM-DD.")
        date: dt.date = super()._deserialize(value, attr, data, **kwargs)
        return date


def _in_the_past(value: dt.date) -> None:
    if value >= dt.date.today():
        raise ValidationError("Birth date must be in the past.")


class StrictSchema(Schema):
    """Unknown fields are an error, reported with the others."""

    class Meta:
        unknown = RAISE


class SignupSchema(StrictSchema):
    """`POST /auth/signup`."""

    email = Email(
        required=True,
        validate=validate.Length(max=254),
        metadata={
            "description": "One account per mailbox: compared case-insensitively, the "
            "domain in its IDNA (punycode) form, the part before the @ in its NFKC form; "
            "quoted local parts, invisible characters and Latin mixed with look-alike "
            "Greek or Cyrillic letters are refused. Shown back as typed."
        },
    )
    password = Password(
        required=True,
        validate=validate.Length(min=MIN_LENGTH, max=MAX_LENGTH),
        metadata={
            "description": "Any characters; never truncated, stored only as argon2id. "
            "Refused when it is one of the 30,000 most common passwords, or equal to "
            "the email, its part before the @, or the nickname (case-insensitively)."
        },
    )
    name = Text(
        required=True,
        validate=validate.Length(min=1, max=50),
        metadata={"description": "No control characters."},
    )
    phone = Text(
        required=True,
        validate=[
            validate.Length(min=8, max=20),
            validate.Regexp(PHONE, error="Digits, an optional leading +, and - separators."),
        ],
        metadata={"description": "Digits, an optional leading `+`, and `-` separators."},
    )
    birth = IsoDate(
        required=True,
        format="%Y-%m-%d",
        validate=_in_the_past,
        metadata={"description": "`YYYY-MM-DD`, in the past."},
    )
    gender = fields.String(required=True, validate=validate.OneOf(GENDERS))
    role = fields.String(required=True, validate=validate.OneOf(ROLES))
    nickname = Text(
        required=True,
        validate=validate.Length(min=2, max=20),
        metadata={"description": "No control characters."},
    )
    favoriteStyles = fields.List(
        StrictInteger(validate=validate.Range(min=1, max=MAX_STYLE_ID)),
        load_default=list,
        validate=[validate.Length(max=20), distinct_values],
        metadata={"description": "Distinct style ids; empty when left out."},
    )

    # Runs even when other fields have errors (marshmallow skips schema validators then by
    # default), so that the password's problems are reported with every other field's.
    # `data` holds only the fields that passed their own validation.
    @validates_schema(skip_on_field_errors=False)
    def _password_policy(self, data: dict[str, Any], **_kwargs: Any) -> None:
        password = data.get("password")
        if not isinstance(password, str):
            return  # already reported (missing, wrong type or length)
        email, nickname = data.get("email"), data.get("nickname")
        problems = password_problems(
            password,
            email=email if isinstance(email, str) else None,
            nickname=nickname if isinstance(nickname, str) else None,
        )
        if problems:
            raise ValidationError(problems, "password")


class LoginSchema(StrictSchema):
    """`POST /auth/login`."""

    email = Email(required=True, validate=validate.Length(max=254))
    password = Password(required=True, validate=validate.Length(min=1, max=128))


class PasswordChangeSchema(StrictSchema):
    """`PUT /auth/password`."""

    currentPassword = Password(required=True, validate=validate.Length(min=1, max=MAX_LENGTH))
    newPassword = Password(
        required=True,
        validate=validate.Length(min=MIN_LENGTH, max=MAX_LENGTH),
        metadata={
            "description": "Under the signup's password policy (against the account's "
            "email and nickname), and not the current password."
        },
    )


class DeleteAccountSchema(StrictSchema):
    """`DELETE /auth/me`: the current password, to re-authenticate."""

    password = Password(required=True, validate=validate.Length(min=1, max=MAX_LENGTH))


class SignupStatusSchema(AnswerSchema):
    """`GET /auth/signups/<uuid>` answers 200 with this."""

    status = fields.String(
        required=True,
        validate=validate.OneOf(["PENDING", "ACTIVE", "REJECTED"]),
        metadata={
            "description": "PENDING until the member service answers; ACTIVE once the "
            "profile exists; REJECTED when it refused the profile (the account's data "
            "is then erased and its email free again)."
        },
    )
    reason = fields.String(
        validate=validate.OneOf(REJECTION_REASONS),
        metadata={"description": "Why, when REJECTED: `nickname_taken`."},
    )


class DeletedSchema(AnswerSchema):
    """`DELETE /auth/me` answers 202 with this."""

    uuid = fields.UUID(required=True, metadata={"description": "The deleted account's id."})


class SignedUpSchema(AnswerSchema):
    """`POST /auth/signup` answers 201 with this."""

    uuid = fields.UUID(
        required=True, metadata={"description": "The new member's id, in every event about it."}
    )


class TokenSchema(AnswerSchema):
    """`POST /auth/login` answers 200 with this."""

    accessToken = fields.String(
        required=True,
        metadata={
            "description": "An HS256 JWT (typ `at+jwt`) whose `sub` is the member uuid, with "
            "`iss`, `aud`, `iat` and `exp`."
        },
    )
    tokenType = fields.String(required=True, validate=validate.OneOf(["Bearer"]))
    expiresIn = fields.Integer(
        required=True, metadata={"description": "Seconds until the token expires."}
    )


class AccountSchema(AnswerSchema):
    """`GET /auth/me` answers 200 with this."""

    uuid = fields.UUID(required=True)
    email = fields.String(required=True, metadata={"description": "As given at signup."})
    role = fields.String(required=True, validate=validate.OneOf(ROLES))
    nickname = fields.String(required=True)
