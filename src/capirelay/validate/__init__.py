"""Meta's acceptance rules for a server event, as data.

Meta rejects a whole request when one event in it is invalid, so every event is
checked here before it is queued or batched.  Each :class:`Rule` is one
documented rule (reference: Meta's server-event, customer-information,
custom-data, app-data, business-messaging and LDU pages, and the v13 "baseline
matching" rule); its check yields :class:`~capirelay.problems.Problem`\\ s
whose ``code`` is the rule's code.  Errors block the event; warnings travel
with it.

Input is the **wire** dict, as sent to Meta: identifiers already normalized and
SHA-256 hashed.  Messages name the field and the fix, never a value.

Validation runs on every event at ingest (and again in the emulator and on
DLQ replay), so everything that can be is precomputed (the ISO 4217 set, the
regexes, the baseline key sets, each field's accepted exact types), the
per-event facts every rule needs are read once into a :class:`Context`, and
each check settles the common, valid case with a dict lookup or two before it
does any real work.  A check answers the shared empty tuple when it finds
nothing, so a valid event allocates no problem lists.

The ``fbc``/``fbp`` grammar is :mod:`capirelay.browser_ids`' (one definition
for what we build and what we accept); Meta's limits, windows and key lists are
:mod:`capirelay.meta_facts`'.  Those leaf modules and :mod:`capirelay.problems`
are this package's only dependencies.

Layout: :mod:`~capirelay.validate.rules` is the rule table (with Meta's subcode
per rule), :mod:`~capirelay.validate.checks` the check behind each rule,
:mod:`~capirelay.validate.engine` runs them (``validate_event``,
``validate_batch``, ``deadline``, ``meta_subcode``).

``META_SUBCODES`` maps each error code to the Graph ``error_subcode`` Meta
answers with (the local emulator uses it).  Only four are documented by
observation (RudderStack's map) plus 2804019 for an out-of-window time; the
rest use 2804050, the generic subcode observed for invalid events.
"""

from capirelay.meta_facts import MAX_EVENTS_PER_REQUEST
from capirelay.validate._context import ACTION_SOURCES, Context
from capirelay.validate.engine import deadline, meta_subcode, validate_batch, validate_event
from capirelay.validate.rules import GENERIC_SUBCODE, META, META_SUBCODES, POLICY, RULES, Rule

__all__ = [
    "ACTION_SOURCES",
    "GENERIC_SUBCODE",
    "MAX_EVENTS_PER_REQUEST",
    "META",
    "META_SUBCODES",
    "POLICY",
    "RULES",
    "Context",
    "Rule",
    "deadline",
    "meta_subcode",
    "validate_batch",
    "validate_event",
]
