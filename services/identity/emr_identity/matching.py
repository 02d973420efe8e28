"""Record linkage for Vietnamese demographics: blocking keys, Fellegi–Sunter scoring with per-field
contributions, and the link / review / new decision. Pure; no I/O.

Weights are log2(m/u): m = P(level | same person), u = P(level | different persons). The m and u
of every level are estimated from labelled pairs of the synthetic population (its ground truth) by
`bench/identity_quality.py --estimate-weights`, which writes emr_identity/data/match_weights.csv;
the matcher loads that file. Name u-probabilities are not constants: they are the share of the name
in the index (a shared Nguyễn says little, a shared rare given name says much).
"""

from __future__ import annotations

import csv
import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from importlib import resources

from emr_identity.birth_dates import BirthDate, DatePrecision
from emr_identity.domain import IdentifierSystem, Registration, identifier_key, phone_key
from emr_identity.vietnamese import NameParts, bhyt_social_insurance_code, current_province_code, fold

# Link automatically at or above; review between the two; a new person below REVIEW_THRESHOLD.
LINK_THRESHOLD = 21.0
REVIEW_THRESHOLD = 11.0
# Weight of the prior name shares (in records) against the counts of the index.
PRIOR_RECORDS = 1_000
# Prior shares: what a family, middle or given name typically covers before counts say otherwise.
PRIOR_FAMILY_SHARE = 0.05
PRIOR_MIDDLE_SHARE = 0.05
PRIOR_GIVEN_SHARE = 0.01
# A given name seen at least this often (share of the index, and records) is an established name:
# one edit between two established names is two names (Hà, Hân; Tâm, Tân: twins often bear such
# pairs), not a typo of one.
ESTABLISHED_NAME_SHARE = 1e-4
ESTABLISHED_NAME_RECORDS = 3
# ...and when the rarer is at least this share of the commoner: a typo of a common name (Ahn for
# Anh) recurs, but stays a tiny fraction of the name it comes from.
ESTABLISHED_NAME_RATIO = 0.01
# Smallest share a name can have in the index, so that one unseen name does not dominate a score.
MIN_NAME_SHARE = 2e-4
# Most members of one block that retrieval scores. Every blocking key carries a birth date, a birth
# year, a day and month or a unique number, so blocks stay small as the index grows (bench/identity_speed.py prints
# the largest); a block above this is a sign that a key is too broad (e.g. a phone shared by a
# whole ward) and should be narrowed. Its newest members are scored and the rest left out, never
# silently: the service counts each such read in emr_identity_oversized_blocks_total.
MAX_BLOCK_MEMBERS = 500
IDENTIFIER_FIELDS = ("cccd", "bhyt", "passport")
# Birth-date levels that, with the names, say enough to link without an agreeing phone or card.
CORROBORATING_BIRTH_DATE_LEVELS = frozenset({"exact", "day_month_swap", "year_off_one"})
# A date known only to the year or month that agrees: with the whole name agreeing, evidence enough
# (older patients often know no more, and give no phone).
PARTIAL_BIRTH_DATE_AGREEMENTS = frozenset({"year_known", "month_known"})
NAME_FIELDS = ("given_name", "middle_name", "family_name")
# Birth-date levels no entry error explains (another day and month, or the year further off than
# one): two persons, unless a card says otherwise (a relative with the same name and phone).
CONTRADICTING_BIRTH_DATE_LEVELS = frozenset({"disagree", "day_month"})
WEIGHTS_FILE = "match_weights.csv"


def load_weights(text: str) -> dict[tuple[str, str], tuple[float, float]]:
    """(field, level) -> (m, u) from the weights file: ``#`` lines, then CSV field,level,m,u."""
    rows = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    return {(row["field"], row["level"]): (float(row["m"]), float(row["u"])) for row in rows}


WEIGHTS = load_weights(resources.files("emr_identity").joinpath("data", WEIGHTS_FILE).read_text("utf-8"))


@dataclass(frozen=True)
class MatchRecord:
    """The normalised demographics of one facility record, as the matcher sees them."""

    record_id: str
    names: NameParts
    birth_date: BirthDate
    sex: str
    phone: str = ""
    province_code: str = ""
    cccd: str = ""
    bhyt_code: str = ""
    passport: str = ""


@dataclass(frozen=True)
class Contribution:
    """What one field added to a score: the agreement level found and its weight."""

    field: str
    level: str
    weight: float


@dataclass(frozen=True)
class MatchScore:
    total: float
    contributions: tuple[Contribution, ...]
    # Same CCCD or social-insurance code with compatible demographics: linked whatever the total.
    deterministic: bool = False
    # Evidence beyond names: birth date exact, day/month-swapped or the year one off, or an
    # agreeing identifier or phone. Names alone, however rare, never link automatically.
    corroborated: bool = False
    # A CCCD, social-insurance code or passport differs (for a person: one it holds on any record,
    # and not the record's): two citizens, so never an automatic link.
    identifier_conflict: bool = False
    # Another given name, or the same one with other diacritics (Điệp, Diệp): at most a review.
    # Twins share everything else; a card agreeing (``deterministic``) still links.
    other_given_name: bool = False
    # A birth date no entry error explains (CONTRADICTING_BIRTH_DATE_LEVELS): at most a review.
    other_birth_date: bool = False


class Decision(Enum):
    LINK = "link"
    REVIEW = "review"
    NEW = "new"


@dataclass(frozen=True)
class Candidate:
    person_id: str
    score: MatchScore


@dataclass(frozen=True)
class MatchResult:
    decision: Decision
    # Best first; the person linked to (LINK) or proposed (REVIEW) is the first.
    candidates: tuple[Candidate, ...]


def _weight(m: float, u: float) -> float:
    return math.log2(m / u)


def _estimated(label: str, level: str) -> float:
    m, u = WEIGHTS[(label, level)]
    return _weight(m, u)


@dataclass
class NameFrequencies:
    """How often each folded family, middle and given name occurs in the index."""

    family: Counter[str] = field(default_factory=Counter)
    middle: Counter[str] = field(default_factory=Counter)
    given: Counter[str] = field(default_factory=Counter)
    total: int = 0

    def add(self, names: NameParts) -> None:
        self.family[names.folded_family] += 1
        self.middle[names.folded_middle] += 1
        self.given[names.folded_given] += 1
        self.total += 1

    def share(self, counts: Counter[str], folded: str, prior: float) -> float:
        """The name's share, smoothed towards ``prior`` as if PRIOR_RECORDS records had it at that
        share: a young index (ten records) says nothing reliable about how common a name is."""
        smoothed = (counts[folded] + PRIOR_RECORDS * prior) / (self.total + PRIOR_RECORDS)
        return max(smoothed, MIN_NAME_SHARE)

    def both_established(self, counts: Counter[str], folded_a: str, folded_b: str) -> bool:
        """Whether two names are both common enough in the index, and near enough in frequency,
        to be names of their own rather than one and a typo of it."""
        rarer, commoner = sorted((counts[folded_a], counts[folded_b]))
        least = max(ESTABLISHED_NAME_RECORDS, self.total * ESTABLISHED_NAME_SHARE)
        return rarer >= least and rarer >= commoner * ESTABLISHED_NAME_RATIO


def _within_one_edit(a: str, b: str) -> bool:
    """One substitution, insertion, deletion or adjacent transposition apart (a typo)."""
    if a == b:
        return True
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diffs = [i for i in range(len(a)) if a[i] != b[i]]
        if len(diffs) == 1:
            return True
        return (
            len(diffs) == 2
            and diffs[1] == diffs[0] + 1
            and a[diffs[0]] == b[diffs[1]]
            and a[diffs[1]] == b[diffs[0]]
        )
    short, long = (a, b) if len(a) < len(b) else (b, a)
    return any(long[:i] + long[i + 1 :] == short for i in range(len(long)))


def _compare_name(
    label: str,
    a: str,
    b: str,
    folded_a: str,
    folded_b: str,
    share: float,
    accented: bool,
    both_established: bool = False,
) -> Contribution:
    """Exact (tones kept), folded (one record written without diacritics), diacritic (both
    written with diacritics, the given names differ only in them: Điệp and Diệp are two names),
    typo (unless both names are established names: then they disagree), or disagree. Levels of an
    agreement once folded use the name's share in the index as u, split among exact, folded and
    diacritic as the estimated weights split it."""
    level = _name_level(a, b, folded_a, folded_b)
    if level == "folded" and accented and label == "given_name":
        level = "diacritic"
    elif level == "typo" and both_established:
        level = "disagree"
    if level == "missing":
        return Contribution(label, level, 0.0)
    row = _weight_row(level, a)
    if row == UNACCENTED_EXACT:
        # A name without diacritics (Anh, Linh) can only agree exactly: u is its share.
        return Contribution(label, level, _weight(WEIGHTS[(label, row)][0], share))
    if level in _FOLD_EQUAL_LEVELS:
        m, _ = WEIGHTS[(label, level)]
        return Contribution(label, level, _weight(m, share * _fold_equal_part(label, level)))
    return Contribution(label, level, _estimated(label, level))


# Levels of names equal once folded: their u is the name's share, split as the estimates split it
# (estimated over names that carry diacritics, the only ones that can agree at more than one).
_FOLD_EQUAL_LEVELS = ("exact", "folded", "diacritic")
# The weights row of an exact agreement of a name without diacritics.
UNACCENTED_EXACT = "exact_unaccented"


def _weight_row(level: str, a: str) -> str:
    """The row of the weights file a name comparison's level is weighted by."""
    return UNACCENTED_EXACT if level == "exact" and fold(a) == a else level


def weight_rows(a: MatchRecord, b: MatchRecord, frequencies: NameFrequencies) -> list[tuple[str, str]]:
    """The (field, row) of the weights file each contribution of ``score(a, b)`` is weighted by
    (what estimating the weights counts)."""
    parts = {"given_name": a.names.given, "middle_name": a.names.middle, "family_name": a.names.family}
    return [
        (c.field, _weight_row(c.level, parts[c.field]) if c.field in parts else c.level)
        for c in score(a, b, frequencies).contributions
        if c.level != "missing"
    ]


def _fold_equal_part(label: str, level: str) -> float:
    total = sum(WEIGHTS[(label, other)][1] for other in _FOLD_EQUAL_LEVELS if (label, other) in WEIGHTS)
    return WEIGHTS[(label, level)][1] / total


def _accented(names: NameParts) -> bool:
    """Whether the name is written with diacritics anywhere (a record typed without them says
    nothing about its tones)."""
    return names.folded_full != names.full


def _name_level(a: str, b: str, folded_a: str, folded_b: str) -> str:
    """How two parts of a name agree: missing, exact, folded, typo or disagree."""
    if not folded_a or not folded_b:
        return "missing"
    if a == b:
        return "exact"
    if folded_a == folded_b:
        return "folded"
    if max(len(folded_a), len(folded_b)) >= 3 and _within_one_edit(folded_a, folded_b):
        return "typo"  # either way round: "ta" for "tai" is a typo too
    return "disagree"


_PRECISION_ORDER = (DatePrecision.YEAR, DatePrecision.MONTH, DatePrecision.DAY)


def _birth_date_level(a: BirthDate, b: BirthDate) -> str:
    """Full dates: exact, day_month_swap, year_off_one (day and month agree, either way round),
    year_month, year,
    day_month (the year further off), disagree. A date known to the year or month against another
    date by what both know: year_known / month_known when that agrees, partial_year_off_one when
    only the year is one off, year when the months differ, else disagree."""
    known = min((a.precision, b.precision), key=_PRECISION_ORDER.index)
    if known is not DatePrecision.DAY:
        months_agree = known is DatePrecision.YEAR or a.month == b.month
        if a.year == b.year:
            if months_agree:
                return "year_known" if known is DatePrecision.YEAR else "month_known"
            return "year"
        if abs(a.year - b.year) == 1 and months_agree:
            return "partial_year_off_one"
        return "disagree"
    if a == b:
        return "exact"
    if a.year == b.year and a.day == b.month and a.month == b.day:
        return "day_month_swap"
    if abs(a.year - b.year) == 1 and sorted((a.month, a.day)) == sorted((b.month, b.day)):
        return "year_off_one"  # day and month as given, or swapped as well
    if a.year == b.year and a.month == b.month:
        return "year_month"
    if a.year == b.year:
        return "year"
    if a.month == b.month and a.day == b.day and abs(a.year - b.year) <= 10:
        return "day_month"
    return "disagree"


def _compare_birth_date(a: BirthDate, b: BirthDate) -> Contribution:
    level = _birth_date_level(a, b)
    return Contribution("birth_date", level, _estimated("birth_date", level))


def _compare_phone(a: str, b: str) -> Contribution:
    if not a or not b:
        return Contribution("phone", "missing", 0.0)
    if a == b:
        level = "exact"
    elif len(a) == len(b) and _within_one_edit(a, b):
        level = "typo"
    else:
        level = "disagree"
    return Contribution("phone", level, _estimated("phone", level))


def _compare_identifier(label: str, a: str, b: str) -> Contribution | None:
    if not a or not b:
        return None
    level = "exact" if a == b else "disagree"
    return Contribution(label, level, _estimated(label, level))


def _compatible(a: MatchRecord, b: MatchRecord) -> bool:
    """Demographics that fit one person: birth year agrees or is one off, and the folded given name
    is the same or one typo away (a shared card number with these is a link, not a coincidence)."""
    near_year = abs(a.birth_date.year - b.birth_date.year) <= 1
    given_a, given_b = a.names.folded_given, b.names.folded_given
    return near_year and _within_one_edit(given_a, given_b)


def score(a: MatchRecord, b: MatchRecord, frequencies: NameFrequencies) -> MatchScore:
    """The Fellegi–Sunter score of two records with what each field contributed."""
    names_a, names_b = a.names, b.names
    accented = _accented(names_a) and _accented(names_b)
    parts = [
        _compare_name(
            "given_name",
            names_a.given,
            names_b.given,
            names_a.folded_given,
            names_b.folded_given,
            frequencies.share(frequencies.given, names_a.folded_given, PRIOR_GIVEN_SHARE),
            accented,
            frequencies.both_established(frequencies.given, names_a.folded_given, names_b.folded_given),
        ),
        _compare_name(
            "middle_name",
            names_a.middle,
            names_b.middle,
            names_a.folded_middle,
            names_b.folded_middle,
            frequencies.share(frequencies.middle, names_a.folded_middle, PRIOR_MIDDLE_SHARE),
            accented,
        ),
        _compare_name(
            "family_name",
            names_a.family,
            names_b.family,
            names_a.folded_family,
            names_b.folded_family,
            frequencies.share(frequencies.family, names_a.folded_family, PRIOR_FAMILY_SHARE),
            accented,
        ),
        _compare_birth_date(a.birth_date, b.birth_date),
        Contribution("sex", "agree", _estimated("sex", "agree"))
        if a.sex == b.sex
        else Contribution("sex", "disagree", _estimated("sex", "disagree")),
        _compare_phone(a.phone, b.phone),
    ]
    if a.province_code and b.province_code:
        # Compared as the units they belong to today: 93 (Hậu Giang, merged in 2025) agrees with 92.
        level = (
            "agree"
            if current_province_code(a.province_code) == current_province_code(b.province_code)
            else "disagree"
        )
        parts.append(Contribution("province", level, _estimated("province", level)))
    identifier_parts = [
        _compare_identifier("cccd", a.cccd, b.cccd),
        _compare_identifier("bhyt", a.bhyt_code, b.bhyt_code),
        _compare_identifier("passport", a.passport, b.passport),
    ]
    parts.extend(part for part in identifier_parts if part is not None)
    return _scored(parts, shared_card=bool(shared_identifiers(a, b)) and _compatible(a, b))


def _scored(parts: Sequence[Contribution], shared_card: bool) -> MatchScore:
    levels = {p.field: p.level for p in parts}
    whole_name = all(levels.get(f) in ("exact", "folded") for f in NAME_FIELDS)
    corroborated = (
        levels.get("birth_date") in CORROBORATING_BIRTH_DATE_LEVELS
        or (whole_name and levels.get("birth_date") in PARTIAL_BIRTH_DATE_AGREEMENTS)
        or any(levels.get(f) in ("exact", "typo") for f in ("phone", "cccd", "bhyt", "passport"))
    )
    conflicting = any(levels.get(f) == "disagree" for f in IDENTIFIER_FIELDS)
    return MatchScore(
        total=round(sum(p.weight for p in parts), 3),
        contributions=tuple(parts),
        # A shared card links, unless another card (CCCD, social-insurance code, passport) differs.
        deterministic=shared_card and not conflicting,
        corroborated=corroborated,
        identifier_conflict=conflicting,
        other_given_name=levels.get("given_name") in ("disagree", "diacritic"),
        other_birth_date=levels.get("birth_date") in CONTRADICTING_BIRTH_DATE_LEVELS,
    )


def _sorted_day_month(value: BirthDate) -> str:
    low, high = sorted((value.day, value.month))
    return f"{value.year}{low:02d}{high:02d}"


def blocking_keys(record: MatchRecord) -> frozenset[str]:
    """Keys under which a record is filed for candidate retrieval. Never surname alone: with
    Nguyễn at ~38% a surname block holds a third of the index; nor full name + province (a
    popular name in Hồ Chí Minh City fills a block that grows with the index). Each key includes
    a birth date, year, day and month, or a unique number, so block sizes stay flat as the index
    grows. Birth dates are keyed with day and month sorted, so a day/month swap files under the
    same key; the full name with day and month alone (``fdm``) retrieves a birth year given wrong.
    A date known only to the year or month is filed under the full name and that year and the
    years either side (a day it lacks would make a false key; a year it gives may be one off)."""
    names = record.names
    year = record.birth_date.year
    keys = {f"fy:{names.folded_full}|{year}"}
    if record.birth_date.precision is DatePrecision.DAY:
        dob = _sorted_day_month(record.birth_date)
        keys.add(f"gd:{names.folded_given}|{dob}")
        keys.add(f"fmd:{names.folded_family} {names.folded_middle}|{dob}")
        keys.add(f"fdm:{names.folded_full}|{dob[4:]}")
    else:
        keys.update(f"fy:{names.folded_full}|{near}" for near in (year - 1, year + 1))
    if record.phone:
        keys.add(phone_key(record.phone))
    for system, value in (
        (IdentifierSystem.CCCD, record.cccd),
        (IdentifierSystem.BHYT, record.bhyt_code),
        (IdentifierSystem.PASSPORT, record.passport),
    ):
        if value:
            keys.add(identifier_key(system, value))
    return frozenset(keys)


def block_kind(key: str) -> str:
    """The kind of a blocking key (``gd``, ``fmd``, ``fy``, ``ph``, ``cccd`` …): its prefix, which
    carries no patient data (a label for metrics)."""
    return key.partition(":")[0]


def candidate_records(
    blocks: Mapping[str, Sequence[MatchRecord]], limit: int = MAX_BLOCK_MEMBERS
) -> tuple[dict[str, MatchRecord], list[str]]:
    """The records to score from the blocks read (key -> members in the order filed), by record
    id, and the keys of blocks over ``limit``, of which only the newest ``limit`` members are kept."""
    records: dict[str, MatchRecord] = {}
    oversized: list[str] = []
    for key, members in blocks.items():
        if len(members) > limit:
            oversized.append(key)
            members = members[-limit:]
        for member in members:
            records.setdefault(member.record_id, member)
    return records, oversized


def proposable(found: MatchScore, review_threshold: float = REVIEW_THRESHOLD) -> bool:
    """Whether a score is worth proposing: a deterministic match, or at least the review threshold."""
    return found.deterministic or found.total >= review_threshold


def _held_identifiers(records: Sequence[MatchRecord]) -> dict[str, set[str]]:
    held: dict[str, set[str]] = defaultdict(set)
    for other in records:
        for label, value in (("cccd", other.cccd), ("bhyt", other.bhyt_code), ("passport", other.passport)):
            if value:
                held[label].add(value)
    return held


def person_score(record: MatchRecord, found: MatchScore, held: Mapping[str, set[str]]) -> MatchScore:
    """``found`` (the score of the person's best-matching record) with its identifier levels taken
    from everything the person holds: the record's number among them agrees, a number of a system
    the person holds otherwise is a disagreement, whichever record carries it."""
    values = {"cccd": record.cccd, "bhyt": record.bhyt_code, "passport": record.passport}
    parts = [c for c in found.contributions if c.field not in IDENTIFIER_FIELDS]
    for label in IDENTIFIER_FIELDS:
        value, holding = values[label], held.get(label, set())
        if value and holding:
            level = "exact" if value in holding else "disagree"
            parts.append(Contribution(label, level, _estimated(label, level)))
    return _scored(parts, shared_card=found.deterministic)


def rank(
    record: MatchRecord,
    candidates: Sequence[tuple[str, MatchRecord]],
    frequencies: NameFrequencies,
    rejected_person_ids: frozenset[str] = frozenset(),
) -> list[Candidate]:
    """Each person (of the candidate records: person id, record) scored by its best-matching record,
    with the identifiers of all its candidate records compared (``person_score``), best first;
    persons in ``rejected_person_ids`` left out. Pass every record of a candidate person, so that a
    card on any of them counts."""
    best: dict[str, MatchScore] = {}
    records_of: dict[str, list[MatchRecord]] = defaultdict(list)
    for person_id, other in candidates:
        if person_id in rejected_person_ids:
            continue
        records_of[person_id].append(other)
        found = score(record, other, frequencies)
        held = best.get(person_id)
        if held is None or (found.deterministic, found.total) > (held.deterministic, held.total):
            best[person_id] = found
    scored = (
        Candidate(p, person_score(record, s, _held_identifiers(records_of[p]))) for p, s in best.items()
    )
    return sorted(scored, key=lambda c: (c.score.deterministic, c.score.total), reverse=True)


def _strong(found: MatchScore, link_threshold: float) -> bool:
    return (
        found.total >= link_threshold
        and found.corroborated
        and not found.identifier_conflict
        and not found.other_given_name
        and not found.other_birth_date
    )


def decide(
    record: MatchRecord,
    candidates: list[tuple[str, MatchRecord]],
    frequencies: NameFrequencies,
    rejected_person_ids: frozenset[str] = frozenset(),
    link_threshold: float = LINK_THRESHOLD,
    review_threshold: float = REVIEW_THRESHOLD,
) -> MatchResult:
    """Scores a record against candidate records (person id, record; every record of each
    candidate person, so that their cards are all compared) and decides: LINK to the one person
    matched deterministically by a card, however the others score; else LINK to the one person at
    or above LINK_THRESHOLD with corroborating evidence, no differing card and the same given name;
    REVIEW when such a person is not alone or a proposable person falls short of it (a twin: another
    given name; another card); NEW otherwise. Persons in ``rejected_person_ids`` were judged
    different from this record and are never proposed."""
    ranked = [
        c
        for c in rank(record, candidates, frequencies, rejected_person_ids)
        if proposable(c.score, review_threshold)
    ]
    if not ranked:
        return MatchResult(Decision.NEW, ())
    deterministic = [c for c in ranked if c.score.deterministic]
    strong = deterministic or [c for c in ranked if _strong(c.score, link_threshold)]
    if len(strong) == 1:
        chosen = strong[0]
        return MatchResult(Decision.LINK, (chosen, *(c for c in ranked if c is not chosen)))
    return MatchResult(Decision.REVIEW, tuple(ranked))


# --- identifiers and the identity they belong to ----------------------------------------------------
# An identifier a person already holds (CCCD, BHYT, passport) takes a registration to that person only
# when the registration names the same person; otherwise anyone who read a card number would receive
# the person and their data. "The same person" uses the matcher's own comparison levels, tolerating
# the data entry errors hospitals make (those emr_identity.synthetic models):
# - the names agree once folded (tones lost or wrong), or each part agrees exact, folded or with one
#   typo, where a middle name left out on one side is tolerated (a family or given name is not);
# - the birth date agrees exactly, with day and month swapped, or with the year one off (same day
#   and month); a date known only to the year or month agrees when what it knows agrees, or when
#   only its year is one off.
# Sex, phone and address are not compared: they change, or are mistyped, without another person
# being meant. Everything else (another given name, another birth day) is a conflict for review.
TOLERATED_NAME_LEVELS = frozenset({"exact", "folded", "typo"})
TOLERATED_BIRTH_DATE_LEVELS = frozenset(
    {"exact", "day_month_swap", "year_off_one", "year_known", "month_known", "partial_year_off_one"}
)


def same_identity(a: MatchRecord, b: MatchRecord) -> bool:
    """Whether two records name the same person within the tolerance above."""
    names_a, names_b = a.names, b.names
    if names_a.folded_full != names_b.folded_full:
        family = _tolerant_name_level(names_a.family, names_b.family)
        middle = _tolerant_name_level(names_a.middle, names_b.middle)
        given = _tolerant_name_level(names_a.given, names_b.given)
        if family not in TOLERATED_NAME_LEVELS or given not in TOLERATED_NAME_LEVELS:
            return False
        if middle not in TOLERATED_NAME_LEVELS and middle != "missing":
            return False
    return _birth_date_level(a.birth_date, b.birth_date) in TOLERATED_BIRTH_DATE_LEVELS


def _tolerant_name_level(a: str, b: str) -> str:
    """``_name_level`` either way round: a typo that shortens a name to two letters ("tân", "tn")
    is a typo whichever record came first."""
    folded_a, folded_b = fold(a), fold(b)
    level = _name_level(a, b, folded_a, folded_b)
    return "typo" if level == "disagree" and _name_level(b, a, folded_b, folded_a) == "typo" else level


def shared_identifiers(a: MatchRecord, b: MatchRecord) -> tuple[str, ...]:
    """The identifiers (cccd, bhyt, passport) both records carry with the same value."""
    pairs = (
        ("cccd", a.cccd, b.cccd),
        ("bhyt", a.bhyt_code, b.bhyt_code),
        ("passport", a.passport, b.passport),
    )
    return tuple(label for label, one, other in pairs if one and one == other)


def identifier_conflict(record: MatchRecord, holders: Mapping[str, Sequence[MatchRecord]]) -> bool:
    """Whether ``record`` carries identifiers held by persons known otherwise. ``holders``: each
    person holding one of its identifiers, with the demographics the person is known by (its
    facility records, its current demographics). A conflict when there are holders and none of them
    is known as the same identity: one that is, is the person the registration names, and others
    holding the number too (an earlier conflicting registration, say) do not matter."""
    return bool(holders) and not any(
        same_identity(record, known) for records in holders.values() for known in records
    )


def match_record(registration: Registration, record_id: str) -> MatchRecord:
    """What the matcher compares of a validated registration."""
    by_system = {i.system: i.value for i in registration.identifiers if i.system is not IdentifierSystem.MRN}
    bhyt = by_system.get(IdentifierSystem.BHYT, "")
    return MatchRecord(
        record_id=record_id,
        names=registration.name_parts,
        birth_date=registration.birth_date,
        sex=registration.sex.value,
        phone=registration.phone,
        province_code=registration.province_code,
        cccd=by_system.get(IdentifierSystem.CCCD, ""),
        bhyt_code=(bhyt_social_insurance_code(bhyt) or "") if bhyt else "",
        passport=by_system.get(IdentifierSystem.PASSPORT, ""),
    )
