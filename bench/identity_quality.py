"""Linkage quality of the identity matcher on a synthetic Vietnamese population.

    .venv/bin/python bench/identity_quality.py --records 100000 --duplicate-rate 0.1 --seed 1

Runs the service's own pure code in-process (validation, normalisation, blocking keys, scoring and
the link / review / new decision of emr_identity.matching) over the generated registrations in
arrival order, with an in-memory block index standing in for the service's block collection, and
the registration path of the service around it: a CCCD already claimed resolves to its person, and
a CCCD, BHYT or passport held only by persons known by another name or birth date is kept apart
(emr_identity.matching.identifier_conflict: a person of its own and a review task).
Prints pairwise precision and recall of automatic links (CCCD claims included), the share of
registrations sent to review (likely duplicates and identifier conflicts), and how many of the
conflicts were the same person after all (false conflicts). Exits 1 when a figure misses its target
(TARGETS, the figures the matcher has met since it was written). ``--estimate`` also prints m/u
estimates per comparison level from labelled pairs.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter, defaultdict
from datetime import date

from emr_identity.domain import (
    IdentifierSystem,
    RawIdentifier,
    RegistrationInput,
    Sex,
    identifier_key,
    validate_registration,
)
from emr_identity.matching import (
    LINK_THRESHOLD,
    REVIEW_THRESHOLD,
    Decision,
    MatchRecord,
    NameFrequencies,
    blocking_keys,
    decide,
    identifier_conflict,
    match_record,
    score,
    shared_identifiers,
)
from emr_identity.synthetic import SyntheticRecord, generate

TODAY = date(2026, 1, 1)
# What a run must reach (with the defaults: 10% duplicates): automatic links almost never wrong,
# almost every duplicate linked, few registrations for a human, and a same-person registration kept
# apart as an identifier conflict rarer still.
TARGETS = {
    "precision": (">=", 0.995),
    "recall": (">=", 0.99),
    "review_share": ("<=", 0.01),
    "false_conflict_share": ("<=", 0.001),
}


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
        birth_date=record.birth_date.isoformat(),
        sex=Sex(record.sex),
        facility_code=record.facility_code,
        fingerprint="",
        phone=record.phone,
        province_code=record.province_code,
    )


def pairs(sizes: Counter[object]) -> int:
    return sum(n * (n - 1) // 2 for n in sizes.values())


def run(
    records: int, duplicate_rate: float, seed: int, estimate: bool, thresholds: tuple[float, float]
) -> dict[str, float]:
    started = time.perf_counter()
    population = generate(records, duplicate_rate, seed)
    blocks: dict[str, list[str]] = defaultdict(list)
    stored: dict[str, tuple[str, MatchRecord]] = {}  # record id -> (person id, record)
    claims: dict[str, str] = {}  # CCCD -> the person that claimed it
    records_of: dict[str, list[MatchRecord]] = defaultdict(list)  # person id -> its records
    frequencies = NameFrequencies()
    person_of_record: list[str] = []
    reviews = existing = conflicts = false_conflicts = 0
    largest_candidate_set = 0
    for serial, synthetic in enumerate(population):
        registration = validate_registration(registration_input(synthetic, serial), TODAY)
        record = match_record(registration, f"r{serial}")
        keys = blocking_keys(record)
        owner = claims.get(record.cccd) if record.cccd else None
        holder_ids = {owner} if owner else holders_of_cards(record, blocks, stored)
        holders = {person_id: records_of[person_id] for person_id in holder_ids}
        if identifier_conflict(record, holders):
            # Kept apart: a person of its own and a review task.
            conflicts += 1
            same = {population[int(r.record_id[1:])].person_key for h in holders.values() for r in h}
            false_conflicts += synthetic.person_key in same
            person_id = f"p{serial}"
        elif owner is not None:
            existing += 1
            person_id = owner
        else:
            candidate_ids = {rid for key in keys for rid in blocks.get(key, ())}
            largest_candidate_set = max(largest_candidate_set, len(candidate_ids))
            result = decide(
                record, [stored[rid] for rid in candidate_ids], frequencies, frozenset(), *thresholds
            )
            if result.decision is Decision.LINK:
                person_id = result.candidates[0].person_id
            else:
                # A review task leaves the registration as its own person until a human decides.
                reviews += result.decision is Decision.REVIEW
                person_id = f"p{serial}"
        if record.cccd:
            claims.setdefault(record.cccd, person_id)
        person_of_record.append(person_id)
        stored[record.record_id] = (person_id, record)
        records_of[person_id].append(record)
        for key in keys:
            blocks[key].append(record.record_id)
        frequencies.add(record.names)
    truth = [r.person_key for r in population]
    true_pairs = pairs(Counter(truth))
    linked_pairs = pairs(Counter(person_of_record))
    correct_pairs = pairs(Counter(zip(person_of_record, truth, strict=True)))
    figures = {
        "precision": correct_pairs / linked_pairs if linked_pairs else 1.0,
        "recall": correct_pairs / true_pairs if true_pairs else 1.0,
        "review_share": (reviews + conflicts) / records,
        "false_conflict_share": false_conflicts / records,
    }
    print(f"link_threshold={thresholds[0]} review_threshold={thresholds[1]}")
    print(f"records={records} duplicate_rate={duplicate_rate} seed={seed} persons_true={len(set(truth))}")
    print(f"true_pairs={true_pairs} linked_pairs={linked_pairs} correct_pairs={correct_pairs}")
    print(
        f"precision={figures['precision']:.4f} recall={figures['recall']:.4f} "
        f"review_share={figures['review_share']:.4f} reviews={reviews} existing_by_cccd={existing}"
    )
    print(
        f"identifier_conflicts={conflicts} false_conflicts={false_conflicts} "
        f"false_conflict_share={figures['false_conflict_share']:.5f}"
    )
    print(f"largest_candidate_set={largest_candidate_set} seconds={time.perf_counter() - started:.1f}")
    if estimate:
        print_estimates(population, stored, frequencies, seed)
    return figures


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


def print_estimates(
    population: list[SyntheticRecord],
    stored: dict[str, tuple[str, MatchRecord]],
    frequencies: NameFrequencies,
    seed: int,
) -> None:
    """m: level frequencies over true duplicate pairs; u: over random pairs of different persons."""
    by_person: dict[int, list[MatchRecord]] = defaultdict(list)
    for serial, synthetic in enumerate(population):
        by_person[synthetic.person_key].append(stored[f"r{serial}"][1])
    matches = [(group[0], other) for group in by_person.values() for other in group[1:]]
    rng = random.Random(seed)
    everyone = [stored[f"r{i}"][1] for i in range(len(population))]
    non_matches: list[tuple[MatchRecord, MatchRecord]] = []
    while len(non_matches) < 200_000:
        a, b = rng.choice(everyone), rng.choice(everyone)
        if population[int(a.record_id[1:])].person_key != population[int(b.record_id[1:])].person_key:
            non_matches.append((a, b))
    for label, sample in (("m", matches), ("u", non_matches)):
        levels: Counter[tuple[str, str]] = Counter()
        for a, b in sample:
            levels.update((c.field, c.level) for c in score(a, b, frequencies).contributions)
        fields = Counter(f for f, _ in levels.elements())
        for (field_name, level), n in sorted(levels.items()):
            print(f"{label} {field_name:12s} {level:15s} {n / fields[field_name]:.5f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--duplicate-rate", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--estimate", action="store_true", help="also print m/u estimates per level")
    parser.add_argument("--link-threshold", type=float, default=LINK_THRESHOLD)
    parser.add_argument("--review-threshold", type=float, default=REVIEW_THRESHOLD)
    args = parser.parse_args()
    figures = run(
        args.records,
        args.duplicate_rate,
        args.seed,
        args.estimate,
        (args.link_threshold, args.review_threshold),
    )
    missed = missed_targets(figures)
    print("targets: " + ("; ".join(f"MISSED {m}" for m in missed) if missed else "all met"))
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
