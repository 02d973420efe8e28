"""Linkage quality of the identity matcher on a synthetic Vietnamese population with hard cases.

    .venv/bin/python bench/identity_quality.py --records 100000 --duplicate-rate 0.1 --seed 1

Runs the service's own pure code in-process (validation, normalisation, blocking keys, scoring and
the link / review / new decision of emr_identity.matching) over the generated registrations in
arrival order, with an in-memory block index standing in for the service's block collection, and
the registration path of the service around it: a CCCD already claimed resolves to its person, and
a CCCD, BHYT or passport held only by persons known by another name or birth date is kept apart
(emr_identity.matching.identifier_conflict: a person of its own and a review task). Each candidate
person is scored with all its records, so that a card on any of them counts.

The population (emr_identity.synthetic, ``hard_cases``) holds what the matcher was not built for:
multiple births, namesakes, birth years off by one, partial birth dates, duplicates without cards and
facilities typing without diacritics or swapping day and month. Prints pairwise precision and recall
of automatic links (CCCD claims included), the share of registrations sent to review, per error kind
the precision, recall and review share of its records, the persons holding two different CCCDs, and
the largest block. Exits 1 when a figure misses its target (TARGETS). A registration refused for a
CCCD whose year digits disagree with the birth date is resent with ``accept_inconsistent_cccd`` (as
a client told so would) and counted.

``--estimate-weights`` estimates the m and u of every comparison level from labelled pairs of a
population of its own seed (``--weights-seed``; true duplicate pairs for m, random pairs of different
persons for u) and writes emr_identity/data/match_weights.csv, which the matcher loads. Evaluate on
another seed than the weights were estimated on.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter, defaultdict
from dataclasses import replace
from datetime import date
from pathlib import Path

from emr_identity.domain import (
    IdentifierSystem,
    RawIdentifier,
    Registration,
    RegistrationInput,
    Sex,
    identifier_key,
    validate_registration,
)
from emr_identity.matching import (
    LINK_THRESHOLD,
    REVIEW_THRESHOLD,
    UNACCENTED_EXACT,
    WEIGHTS,
    Decision,
    MatchRecord,
    NameFrequencies,
    block_kind,
    blocking_keys,
    decide,
    identifier_conflict,
    match_record,
    shared_identifiers,
    weight_rows,
)
from emr_identity.synthetic import HARD_CASE_KINDS, SyntheticRecord, generate
from emr_runtime.errors import InvalidArgumentError

TODAY = date(2026, 1, 1)
# What a run must reach (with the defaults: 10% duplicates, hard cases): automatic links almost
# never wrong, almost every duplicate linked, few registrations for a human, a same-person
# registration kept apart as an identifier conflict rarer still, and no person with two CCCDs.
TARGETS = {
    "precision": (">=", 0.997),
    "recall": (">=", 0.99),
    "review_share": ("<=", 0.02),
    "false_conflict_share": ("<=", 0.001),
    "persons_with_two_cccds": ("<=", 0),
}
WEIGHTS_PATH = (
    Path(__file__).resolve().parent.parent / "services/identity/emr_identity/data/match_weights.csv"
)
# Laplace pseudo-count per level when estimating m and u (a level never seen is rare, not impossible).
PSEUDO_COUNT = 0.5
# Random pairs of different persons drawn to estimate u.
U_PAIRS = 400_000


def registration_input(record: SyntheticRecord, serial: int) -> RegistrationInput:
    identifiers = [RawIdentifier(IdentifierSystem.MRN, record.mrn, record.facility_code)]
    if record.cccd:
        identifiers.append(RawIdentifier(IdentifierSystem.CCCD, record.cccd, ""))
    if record.bhyt:
        identifiers.append(RawIdentifier(IdentifierSystem.BHYT, record.bhyt, ""))
    return RegistrationInput(
        request_id=f"bench-{serial}",
        identifiers=tuple(identifiers),
        full_name=record.full_name,
        birth_date=record.birth_date_text,
        sex=Sex(record.sex),
        facility_code=record.facility_code,
        fingerprint="",
        phone=record.phone,
        province_code=record.province_code,
    )


def registered(record: SyntheticRecord, serial: int) -> tuple[Registration, bool]:
    """The validated registration, and whether it had to be resent accepting an inconsistent CCCD."""
    raw = registration_input(record, serial)
    try:
        return validate_registration(raw, TODAY), False
    except InvalidArgumentError:
        return validate_registration(replace(raw, accept_inconsistent_cccd=True), TODAY), True


def pairs(sizes: Counter[object]) -> int:
    return sum(n * (n - 1) // 2 for n in sizes.values())


def run(
    population: list[SyntheticRecord], thresholds: tuple[float, float]
) -> tuple[dict[str, float], list[MatchRecord]]:
    started = time.perf_counter()
    blocks: dict[str, list[str]] = defaultdict(list)
    stored: dict[str, tuple[str, MatchRecord]] = {}  # record id -> (person id, record)
    claims: dict[str, str] = {}  # CCCD -> the person that claimed it
    records_of: dict[str, list[MatchRecord]] = defaultdict(list)  # person id -> its records
    truth_of_person: dict[str, int] = {}  # person id -> the true person of its first record
    frequencies = NameFrequencies()
    person_of_record: list[str] = []
    matched: list[MatchRecord] = []
    reviews = existing = conflicts = false_conflicts = resent = 0
    largest_candidate_set = 0
    seen_truth: set[int] = set()
    # Per kind: records, duplicates, duplicates linked right, links, wrong links, reviews.
    per_kind: dict[str, Counter[str]] = defaultdict(Counter)
    for serial, synthetic in enumerate(population):
        registration, was_resent = registered(synthetic, serial)
        resent += was_resent
        record = match_record(registration, f"r{serial}")
        keys = blocking_keys(record)
        owner = claims.get(record.cccd) if record.cccd else None
        holder_ids = {owner} if owner else holders_of_cards(record, blocks, stored)
        holders = {person_id: records_of[person_id] for person_id in holder_ids}
        outcome = "new"
        if identifier_conflict(record, holders):
            # Kept apart: a person of its own and a review task.
            conflicts += 1
            outcome = "review"
            same = {population[int(r.record_id[1:])].person_key for h in holders.values() for r in h}
            false_conflicts += synthetic.person_key in same
            person_id = f"p{serial}"
        elif owner is not None:
            existing += 1
            outcome = "link"
            person_id = owner
        else:
            candidate_persons = {stored[rid][0] for key in keys for rid in blocks.get(key, ())}
            candidates = [(p, other) for p in candidate_persons for other in records_of[p]]
            largest_candidate_set = max(largest_candidate_set, len(candidates))
            result = decide(record, candidates, frequencies, frozenset(), *thresholds)
            if result.decision is Decision.LINK:
                outcome = "link"
                person_id = result.candidates[0].person_id
            else:
                # A review task leaves the registration as its own person until a human decides.
                reviews += result.decision is Decision.REVIEW
                outcome = "review" if result.decision is Decision.REVIEW else "new"
                person_id = f"p{serial}"
        truth = synthetic.person_key
        for kind in ("all", *synthetic.kinds):
            tally = per_kind[kind]
            tally["records"] += 1
            tally["duplicates"] += truth in seen_truth
            tally["reviews"] += outcome == "review"
            if outcome == "link":
                right = truth_of_person[person_id] == truth
                tally["links"] += 1
                tally["wrong_links"] += not right
                tally["linked_right"] += right
        seen_truth.add(truth)
        truth_of_person.setdefault(person_id, truth)
        if record.cccd:
            claims.setdefault(record.cccd, person_id)
        person_of_record.append(person_id)
        stored[record.record_id] = (person_id, record)
        records_of[person_id].append(record)
        matched.append(record)
        for key in keys:
            blocks[key].append(record.record_id)
        frequencies.add(record.names)
    truths = [r.person_key for r in population]
    true_pairs = pairs(Counter(truths))
    linked_pairs = pairs(Counter(person_of_record))
    correct_pairs = pairs(Counter(zip(person_of_record, truths, strict=True)))
    two_cccds = sum(len({r.cccd for r in held if r.cccd}) > 1 for held in records_of.values())
    records = len(population)
    figures = {
        "precision": correct_pairs / linked_pairs if linked_pairs else 1.0,
        "recall": correct_pairs / true_pairs if true_pairs else 1.0,
        "review_share": (reviews + conflicts) / records,
        "false_conflict_share": false_conflicts / records,
        "persons_with_two_cccds": float(two_cccds),
    }
    print(f"link_threshold={thresholds[0]} review_threshold={thresholds[1]}")
    print(f"records={records} persons_true={len(set(truths))} resent_with_inconsistent_cccd={resent}")
    print(f"true_pairs={true_pairs} linked_pairs={linked_pairs} correct_pairs={correct_pairs}")
    print(
        f"precision={figures['precision']:.4f} recall={figures['recall']:.4f} "
        f"review_share={figures['review_share']:.4f} reviews={reviews} existing_by_cccd={existing}"
    )
    print(
        f"identifier_conflicts={conflicts} false_conflicts={false_conflicts} "
        f"false_conflict_share={figures['false_conflict_share']:.5f} persons_with_two_cccds={two_cccds}"
    )
    largest = Counter[str]()
    for key, members in blocks.items():
        kind = block_kind(key)
        largest[kind] = max(largest[kind], len(members))
    print(
        f"largest_candidate_set={largest_candidate_set} largest_block_by_kind="
        + ",".join(f"{k}:{n}" for k, n in sorted(largest.items()))
        + f" seconds={time.perf_counter() - started:.1f}"
    )
    print_per_kind(per_kind)
    return figures, matched


def print_per_kind(per_kind: dict[str, Counter[str]]) -> None:
    """Per kind of record: precision of its automatic links, recall of its duplicates (linked to
    the right person), and the share of its records sent to review."""
    print(f"{'kind':22s} {'records':>8s} {'dups':>7s} {'precision':>9s} {'recall':>7s} {'review':>7s}")
    for kind in ("all", *HARD_CASE_KINDS):
        tally = per_kind.get(kind)
        if not tally:
            continue
        links, dups = tally["links"], tally["duplicates"]
        precision = 1 - tally["wrong_links"] / links if links else 1.0
        recall = tally["linked_right"] / dups if dups else 1.0
        review = tally["reviews"] / tally["records"]
        print(f"{kind:22s} {tally['records']:8d} {dups:7d} {precision:9.4f} {recall:7.4f} {review:7.4f}")


def holders_of_cards(
    record: MatchRecord, blocks: dict[str, list[str]], stored: dict[str, tuple[str, MatchRecord]]
) -> set[str]:
    """The persons whose records carry the record's BHYT or passport (the service's
    ``_identifier_holders``, over the in-memory blocks)."""
    keys = [
        identifier_key(system, value)
        for system, value in (
            (IdentifierSystem.BHYT, record.bhyt_code),
            (IdentifierSystem.PASSPORT, record.passport),
        )
        if value
    ]
    return {
        stored[rid][0]
        for key in keys
        for rid in blocks.get(key, ())
        if set(shared_identifiers(record, stored[rid][1])) & {"bhyt", "passport"}
    }


def missed_targets(figures: dict[str, float]) -> list[str]:
    missed = []
    for name, (direction, target) in TARGETS.items():
        value = figures[name]
        if (value < target) if direction == ">=" else (value > target):
            missed.append(f"{name}={value:.4f} (target {direction} {target})")
    return missed


def estimate_weights(population: list[SyntheticRecord], matched: list[MatchRecord], seed: int) -> str:
    """The weights file: per field and level (row: ``weight_rows``), m over true duplicate pairs
    (each later record of a person against its first) and u over random pairs of different
    persons, with PSEUDO_COUNT per row. Levels that carry no weight (missing) are left out of both.
    The passport keeps its prior values: the generator issues none."""
    frequencies = NameFrequencies()
    for record in matched:
        frequencies.add(record.names)
    first: dict[int, MatchRecord] = {}
    match_pairs: list[tuple[MatchRecord, MatchRecord]] = []
    for synthetic, record in zip(population, matched, strict=True):
        if synthetic.person_key in first:
            match_pairs.append((first[synthetic.person_key], record))
        else:
            first[synthetic.person_key] = record
    rng = random.Random(seed)  # reproducible sampling, not secrets
    non_match_pairs: list[tuple[MatchRecord, MatchRecord]] = []
    while len(non_match_pairs) < U_PAIRS:
        i, j = rng.randrange(len(matched)), rng.randrange(len(matched))
        if population[i].person_key != population[j].person_key:
            non_match_pairs.append((matched[i], matched[j]))
    levels = sorted(WEIGHTS)
    estimated: dict[tuple[str, str], list[float]] = {}
    for sample in (match_pairs, non_match_pairs):
        counts: Counter[tuple[str, str]] = Counter()
        for a, b in sample:
            counts.update(weight_rows(a, b, frequencies))
        for field_name in {f for f, _ in levels}:
            own = [lv for lv in levels if lv[0] == field_name]
            total = sum(counts[lv] for lv in own) + PSEUDO_COUNT * len(own)
            shares = {lv: (counts[lv] + PSEUDO_COUNT) / total for lv in own}
            if (field_name, UNACCENTED_EXACT) in shares:
                shares = _within_name_kind(field_name, shares)
            for lv in own:
                estimated.setdefault(lv, []).append(shares[lv])
    lines = [
        "# Fellegi-Sunter m = P(level | same person) and u = P(level | different persons) per field and"
        " comparison level, estimated by bench/identity_quality.py --estimate-weights"
        f" from {len(match_pairs)} true duplicate pairs and {len(non_match_pairs)} random pairs of"
        f" different persons of a synthetic population (hard cases, seed {seed}); passport: prior values.",
        "field,level,m,u",
    ]
    for field_name, level in levels:
        m, u = estimated[(field_name, level)]
        if field_name == "passport":
            m, u = WEIGHTS[(field_name, level)]
        lines.append(f"{field_name},{level},{m:.6g},{u:.6g}")
    return "\n".join(lines) + "\n"


def _within_name_kind(field_name: str, shares: dict[tuple[str, str], float]) -> dict[tuple[str, str], float]:
    """Name levels as the matcher uses them: a name without diacritics agrees only exactly, one
    with them exactly, folded or by diacritics; each kind's agreement levels share what typos and
    disagreements leave, in the proportions counted within the kind."""
    unaccented = [(field_name, UNACCENTED_EXACT)]
    accented = [
        (field_name, level) for level in ("exact", "folded", "diacritic") if (field_name, level) in shares
    ]
    agreeing = 1 - sum(v for k, v in shares.items() if k not in unaccented + accented)
    adjusted = dict(shares)
    for kind in (unaccented, accented):
        kind_total = sum(shares[k] for k in kind)
        for k in kind:
            adjusted[k] = agreeing * shares[k] / kind_total
    return adjusted


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--duplicate-rate", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--plain", action="store_true", help="without hard cases (the old population)")
    parser.add_argument(
        "--estimate-weights", action="store_true", help="estimate m/u and write the matcher's weights file"
    )
    parser.add_argument("--weights-seed", type=int, default=1001)
    parser.add_argument("--link-threshold", type=float, default=LINK_THRESHOLD)
    parser.add_argument("--review-threshold", type=float, default=REVIEW_THRESHOLD)
    args = parser.parse_args()
    thresholds = (args.link_threshold, args.review_threshold)
    if args.estimate_weights:
        population = generate(args.records, args.duplicate_rate, args.weights_seed, hard_cases=True)
        matched = [match_record(registered(r, i)[0], f"r{i}") for i, r in enumerate(population)]
        WEIGHTS_PATH.write_text(estimate_weights(population, matched, args.weights_seed), encoding="utf-8")
        print(f"wrote {WEIGHTS_PATH.name}")
        return
    population = generate(args.records, args.duplicate_rate, args.seed, hard_cases=not args.plain)
    print(f"hard_cases={not args.plain} duplicate_rate={args.duplicate_rate} seed={args.seed}")
    figures, _ = run(population, thresholds)
    missed = missed_targets(figures)
    print("targets: " + ("; ".join(f"MISSED {m}" for m in missed) if missed else "all met"))
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
