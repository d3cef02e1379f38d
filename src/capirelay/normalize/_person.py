"""Rules for the person fields: email, names, gender and external_id.

Meta's Customer Information Parameters page: ``em`` trim + lowercase; ``fn``
and ``ln`` lowercase "with no punctuation", UTF-8 for special characters;
``ge`` is ``m`` or ``f``; ``external_id`` is any advertiser id sent the same
way on every channel.  Unlike Meta's Node param builder we never reject a
valid non-ASCII email, and unlike the Python SDK we do strip punctuation from
names (``Mary-Ann O'Neil`` -> ``maryannoneil``).
"""

from __future__ import annotations

import re

from ._errors import NormalizationError
from ._text import LETTERS_MARKS_DIGITS, keep_categories, keep_name_characters, prepare

# One "@", a non-empty local part, a domain of at least two non-empty labels,
# no whitespace or control/format characters anywhere.  Deliberately not an
# RFC 5322 grammar: internationalized addresses (josé@exämple.com) are valid.
_EMAIL_FORBIDDEN = r"\s@\x00-\x1f\x7f\u200b-\u200f\u2028-\u202f\u2060-\u206f\ufeff"
_EMAIL = re.compile(
    rf"[^{_EMAIL_FORBIDDEN}]+@[^{_EMAIL_FORBIDDEN}.]+(?:\.[^{_EMAIL_FORBIDDEN}.]+)+"
)
_EMAIL_MAX_LENGTH = 254

# Words for either, as CRM and form exports write them in a gender or title field.  The
# English honorifics and pronouns beyond "mr"/"he" (sir, mister, him, his; lady, madam,
# ma'am, her, hers) are among those Meta's param builder maps; its lists' nouns of kin
# and rank (uncle, duke, goddess...) are left out: nobody's gender field holds them.
_MALE_WORDS = (
    "m male man boy mr he masculine masc sir mister gentleman him his himself "
    "masculino hombre varon varón masculin homme monsieur "
    "männlich maennlich mann herr maschio maschile uomo mannelijk "
    "мужской мужчина муж м 男 男性 남 남성"
)
_FEMALE_WORDS = (
    "f female woman girl mrs ms miss she feminine fem lady madam maam her hers herself "
    "femenino femenina feminino feminina mujer mulher féminin feminin femme madame "
    "weiblich frau femmina femminile donna vrouwelijk vrouw "
    "женский женщина жен ж 女 女性 여 여성"
)
GENDERS: dict[str, str] = {
    **dict.fromkeys(_MALE_WORDS.split(), "m"),
    **dict.fromkeys(_FEMALE_WORDS.split(), "f"),
}


def email(field: str, value: str) -> str:
    text = prepare(field, value)
    if len(text) > _EMAIL_MAX_LENGTH:
        raise NormalizationError(field, f"is longer than {_EMAIL_MAX_LENGTH} characters")
    if _EMAIL.fullmatch(text) is None:
        raise NormalizationError(field, _email_shape_problem(text))
    return text


def _email_shape_problem(text: str) -> str:
    at_signs = text.count("@")
    if at_signs != 1:
        return f"must contain exactly one '@' (found {at_signs})"
    if any(ch.isspace() for ch in text):
        return "must not contain spaces"
    local, _, domain = text.partition("@")
    if not local:
        return "has nothing before the '@'"
    if "." not in domain:
        return "needs a dot in the domain after the '@'"
    return "has an empty label or a control character in the address"


def name(field: str, value: str) -> str:
    """Lowercase letters (any script), marks, digits and emoji; punctuation and spaces go.

    Emoji stay whole, as in Meta's param builder (which strips only ASCII punctuation
    and whitespace from names: ``John😀`` -> ``john😀``): the symbol, its variation
    selector, skin-tone modifier, zero-width joiners and tag characters
    (``Mary ❤️`` -> ``mary❤️``, not ``mary`` plus a stray selector).
    """
    text = keep_name_characters(prepare(field, value))
    if not text:
        raise NormalizationError(field, "has no letters once punctuation and spaces are removed")
    return text


def first_five(field: str, value: str) -> str:
    return name(field, value)[:5]


def initial(field: str, value: str) -> str:
    return name(field, value)[:1]


def gender(field: str, value: str) -> str:
    text = prepare(field, value)
    key = keep_categories(text, LETTERS_MARKS_DIGITS)
    code = GENDERS.get(key)
    if code is None:
        raise NormalizationError(field, "must be 'm', 'f' or a common word for either")
    return code


def external_id(field: str, value: str) -> str:
    """Lowercase, without any whitespace, inside too (``"User 123"`` -> ``user123``).

    Meta's documentation says nothing of an external id's form; its param builder
    lowercases the id and removes every whitespace character, so the browser's and the
    server's hashes of one id meet whichever side wrote a space into it.
    """
    # Control characters stay, NUL included: the builder keeps them (vector 719 of
    # tests/fixtures/reference/external-normalization-vectors.json), so the browser's hash
    # of such an id is the hash of them too.
    return _JS_WHITESPACE.sub("", prepare(field, value))


# JavaScript's \s, the builder's class (Python's own whitespace also counts the
# information separators U+001C-U+001F, which the builder keeps).
_JS_WHITESPACE = re.compile(
    r"[\t\n\v\f\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]+"
)
