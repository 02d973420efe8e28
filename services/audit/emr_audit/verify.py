"""Offline verifier of an audit export (JSON Lines from ExportEvents), with the public key alone:

    python -m emr_audit.verify --public-key audit-key.pem export.jsonl

Checks every checkpoint's Ed25519 signature, every event's hash against its content, the chain
links, no event missing from the exported range, and each inclusion proof against its signed
checkpoint. Events after the last signed checkpoint are linked but nothing signed vouches for them
yet: they are reported as an unproven tail, never as intact. Prints the verdict; exits 0 when every
event is intact and proven, 3 when the signed part is intact but an unproven tail follows, 1 at the
first bad sequence, 2 on bad input. A finding is printed with its kind (missing_events, altered,
checkpoint_mismatch, bad_signature, as VerifyIntegrity names them) and, for missing events, the
missing stretch.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from emr_audit import merkle
from emr_audit.domain import (
    ChainVerifier,
    Finding,
    FindingKind,
    altered,
    canonical_bytes,
    first_finding,
    missing_events,
)
from emr_audit.signing import key_id, load_public_key, raw_public_key, signature_valid

_CHECKPOINT_FIELDS = (
    "index",
    "first_sequence",
    "last_sequence",
    "merkle_root",
    "chain_head_hash",
    "created_at",
    "key_id",
)

EXIT_INTACT = 0
EXIT_TAMPERED = 1
EXIT_BAD_INPUT = 2
EXIT_UNPROVEN_TAIL = 3


@dataclass(frozen=True)
class Verdict:
    finding: Finding | None
    events: int
    proven: int
    checkpoints: int
    first_sequence: int = 1
    last_sequence: int = 0
    """The range the export's header states."""
    signed_through: int = 0
    """The last sequence a validly signed checkpoint of this export covers (0: none)."""

    @property
    def unproven(self) -> range:
        """Sequences of the stated range after the last signed checkpoint: linked, but not signed."""
        return range(max(self.signed_through, self.first_sequence - 1) + 1, self.last_sequence + 1)

    @property
    def status(self) -> str:
        if self.finding is not None:
            return "TAMPERED"
        return "UNPROVEN" if self.unproven else "INTACT"


def verify_export(lines: Iterable[str], public_key: Ed25519PublicKey) -> Verdict:
    """Judges an export. Raises ValueError when the input is not an export at all."""
    expected_key_id = key_id(raw_public_key(public_key))
    header: dict[str, Any] | None = None
    checkpoints: dict[int, dict[str, Any]] = {}
    signed: list[dict[str, Any]] = []
    findings: list[Finding | None] = []
    chain: ChainVerifier | None = None
    events = proven = last_seen = 0
    first = last = 0
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except ValueError as error:
            raise ValueError(f"line {number} is not JSON") from error
        if not isinstance(line, dict):
            raise ValueError(f"line {number} is not a JSON object")
        kind = line.get("kind")
        if kind == "export":
            if header is not None:
                raise ValueError(f"line {number}: a second export header")
            header = line
            first, last = int(line["from_sequence"]), int(line["to_sequence"])
            chain = ChainVerifier(expected_sequence=first)
        elif kind == "checkpoint":
            checkpoint = {name: line[name] for name in _CHECKPOINT_FIELDS}
            signature = bytes.fromhex(line.get("signature", ""))
            if checkpoint["key_id"] != expected_key_id or not signature_valid(
                public_key, canonical_bytes(checkpoint), signature
            ):
                findings.append(
                    Finding(
                        int(checkpoint["first_sequence"]),
                        f"checkpoint {checkpoint['index']} is not signed by this key",
                        FindingKind.BAD_SIGNATURE,
                    )
                )
            else:
                signed.append(checkpoint)
            checkpoints[int(checkpoint["index"])] = checkpoint
        elif kind == "event":
            if chain is None:
                raise ValueError(f"line {number}: event before the export header")
            events += 1
            sequence = int(line["sequence"])
            last_seen = max(last_seen, sequence)
            if chain.finding is not None:
                _name_misplaced_event(chain, sequence)
                continue
            if not first <= sequence <= last:
                findings.append(altered(sequence, f"event lies outside the stated range {first}..{last}"))
            record = line.get("event")
            stored_hash = bytes.fromhex(line["hash"])
            if not isinstance(record, dict) or record.get("sequence") != sequence:
                chain.finding = altered(sequence, "event record is missing or misnumbered")
                continue
            chain.feed(sequence, canonical_bytes(record), bytes.fromhex(line["previous_hash"]), stored_hash)
            problem = _proof_problem(line.get("proof"), sequence, stored_hash, checkpoints, signed)
            if problem:
                findings.append(Finding(sequence, problem, FindingKind.CHECKPOINT_MISMATCH))
            elif line.get("proof") is not None:
                proven += 1
        else:
            raise ValueError(f"line {number}: unknown kind {kind!r}")
    if header is None or chain is None:
        raise ValueError("no export header line")
    signed_through = max((int(c["last_sequence"]) for c in signed), default=0)
    covered = max((int(c["last_sequence"]) for c in checkpoints.values()), default=0)
    # A signed checkpoint commits to its whole range: a cut inside it is tampering, wherever the
    # header says the export ends.
    findings.append(chain.finish(min(covered, last) if covered >= first else None))
    if chain.finding is None and chain.expected_sequence <= last:
        # Past the last checkpoint only the (unsigned) header says how far the log went.
        findings.append(
            missing_events(
                chain.expected_sequence,
                last,
                f": the unproven tail after the last signed checkpoint (through {signed_through}) "
                "stops short of the stated range",
            )
        )
    return Verdict(first_finding(findings), events, proven, len(checkpoints), first, last, signed_through)


def _name_misplaced_event(chain: ChainVerifier, sequence: int) -> None:
    """An event reported missing that turns up later was moved, not deleted: say so."""
    finding = chain.finding
    if finding is not None and finding.kind is FindingKind.MISSING_EVENTS and sequence == finding.sequence:
        chain.finding = altered(sequence, f"event {sequence} is out of order")


def _proof_problem(
    proof: dict[str, Any] | None,
    sequence: int,
    leaf: bytes,
    checkpoints: dict[int, dict[str, Any]],
    signed: list[dict[str, Any]],
) -> str:
    if proof is None:
        covering = next(
            (c for c in signed if int(c["first_sequence"]) <= sequence <= int(c["last_sequence"])), None
        )
        if covering is None:
            return ""  # the unproven tail
        return f"event carries no inclusion proof though checkpoint {covering['index']} covers it"
    if not isinstance(proof, dict):
        return "proof is not an object"
    checkpoint = checkpoints.get(int(proof["checkpoint"]))
    if checkpoint is None:
        return "proof names a checkpoint the export does not carry"
    first, last = int(checkpoint["first_sequence"]), int(checkpoint["last_sequence"])
    index, size = int(proof["leaf_index"]), int(proof["tree_size"])
    if index != sequence - first or size != last - first + 1:
        return "proof does not place the event where the checkpoint says"
    path = [bytes.fromhex(sibling) for sibling in proof["audit_path"]]
    if not merkle.verify_inclusion(index, size, leaf, path, bytes.fromhex(checkpoint["merkle_root"])):
        return f"event is not included in checkpoint {checkpoint['index']}"
    if sequence == last and leaf.hex() != checkpoint["chain_head_hash"]:
        return f"event is not the chain head of checkpoint {checkpoint['index']}"
    return ""


def report(verdict: Verdict) -> tuple[list[str], int]:
    """The lines to print and the exit code."""
    summary = f"{verdict.events} events, {verdict.proven} proven by {verdict.checkpoints} signed checkpoints"
    finding = verdict.finding
    if finding is not None:
        return [
            f"TAMPERED at sequence {finding.sequence}: {finding.problem} ({summary})",
            finding_line(finding),
        ], EXIT_TAMPERED
    tail = verdict.unproven
    if not tail:
        return [f"INTACT: {summary}"], EXIT_INTACT
    lines = [
        f"UNPROVEN: sequences {tail.start}..{tail.stop - 1} ({len(tail)} events) follow the last signed "
        "checkpoint: their chain links hold, but nothing signed vouches for them yet, so a rewrite or a "
        "cut there cannot be ruled out; export again after the next checkpoint to prove them"
    ]
    if verdict.signed_through >= verdict.first_sequence:
        lines.insert(0, f"INTACT through sequence {verdict.signed_through}: {summary}")
    return lines, EXIT_UNPROVEN_TAIL


def finding_line(finding: Finding) -> str:
    """The finding for scripts: its kind and, for missing events, the stretch."""
    line = f"finding: kind={finding.kind.value} first_bad_sequence={finding.sequence}"
    if finding.missing_stretch is not None:
        first, through = finding.missing_stretch
        line += f" missing_from_sequence={first} missing_through_sequence={through}"
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emr_audit.verify", description=__doc__.splitlines()[0])
    parser.add_argument("--public-key", required=True, type=Path, help="PEM public key (GetPublicKey)")
    parser.add_argument("export", type=Path, help="JSON Lines from ExportEvents")
    arguments = parser.parse_args(argv)
    try:
        public_key = load_public_key(arguments.public_key.read_bytes())
        with arguments.export.open(encoding="utf-8") as export:
            verdict = verify_export(export, public_key)
    except (OSError, ValueError, KeyError, TypeError) as error:
        print(f"cannot verify: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    lines, code = report(verdict)
    print("\n".join(lines))
    return code


if __name__ == "__main__":
    sys.exit(main())
