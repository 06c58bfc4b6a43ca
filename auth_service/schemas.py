"""Request bodies of the auth API, validated with every rule of the contract."""

from __future__ import annotations

import datetime as dt
from marshmallow import RAISE, Schema, ValidationError, fields, validate

from shared.pipeline import ROLES, StrictInteger, distinct_values

GENDERS = ("MALE", "FEMALE", "OTHER")
PHONE = r"^\+?[0-9]+(-[0-9]+)*$"


def _in_the_past(value: dt.date) -> None:
    if value >= dt.date.today():
        raise ValidationError("Birth date must be in the past.")


class StrictSchema(Schema):
    """Unknown fields are an error, reported with the others."""

    class Meta:
        unknown = RAISE


class SignupSchema(StrictSchema):
    """`POST /auth/signup`."""

    email = fields.Email(required=True, validate=validate.Length(max=254))
    password = fields.String(required=True, validate=validate.Length(min=8, max=128))
    name = fields.String(required=True, validate=validate.Length(min=1, max=50))
    phone = fields.String(
        required=True,
        validate=[
            validate.Length(min=8, max=20),
            validate.Regexp(PHONE, error="Digits, an optional leading +, and - separators."),
        ],
    )
    birth = fields.Date(required=True, format="%Y-%m-%d", validate=_in_the_past)
    gender = fields.String(required=True, validate=validate.OneOf(GENDERS))
    role = fields.String(required=True, validate=validate.OneOf(ROLES))
    nickname = fields.String(required=True, validate=validate.Length(min=2, max=20))
    favoriteStyles = fields.List(
        StrictInteger(validate=validate.Range(min=1)),
        load_default=list,
        validate=[validate.Length(max=20), distinct_values],
    )


class LoginSchema(StrictSchema):
    """`POST /auth/login`."""

    email = fields.Email(required=True, validate=validate.Length(max=254))
    password = fields.String(required=True, validate=validate.Length(min=1, max=128))
