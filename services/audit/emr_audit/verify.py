"""Offline verifier of an audit export (JSON Lines from ExportEvents), with the public key alone:

    python -m emr_audit.verify --public-key audit-key.pem export.jsonl

Checks every checkpoint's Ed25519 signature, every event's hash against its content, the chain
links, no event missing from the exported range, and each inclusion proof against its signed
checkpoint. Prints the verdict; exits 0 when intact, 1 at the first bad sequence, 2 on bad input.
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
from emr_audit.domain import ChainVerifier, Finding, canonical_bytes, first_finding
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


@dataclass(frozen=True)
class Verdict:
    finding: Finding | None
    events: int
    proven: int
    checkpoints: int


def verify_export(lines: Iterable[str], public_key: Ed25519PublicKey) -> Verdict:
    """Judges an export. Raises ValueError when the input is not an export at all."""
    expected_key_id = key_id(raw_public_key(public_key))
    header: dict[str, Any] | None = None
    checkpoints: dict[int, dict[str, Any]] = {}
    findings: list[Finding | None] = []
    chain: ChainVerifier | None = None
    events = proven = 0
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except ValueError as error:
            raise ValueError(f"line {number} is not JSON") from error
        kind = line.get("kind")
        if kind == "export":
            header = line
            chain = ChainVerifier(expected_sequence=int(line["from_sequence"]))
        elif kind == "checkpoint":
            checkpoint = {name: line[name] for name in _CHECKPOINT_FIELDS}
            sequence = int(checkpoint["first_sequence"])
            signature = bytes.fromhex(line.get("signature", ""))
            if checkpoint["key_id"] != expected_key_id or not signature_valid(
                public_key, canonical_bytes(checkpoint), signature
            ):
                findings.append(
                    Finding(sequence, f"checkpoint {checkpoint['index']} is not signed by this key")
                )
            checkpoints[int(checkpoint["index"])] = checkpoint
        elif kind == "event":
            if chain is None:
                raise ValueError(f"line {number}: event before the export header")
            events += 1
            sequence = int(line["sequence"])
            record = line.get("event")
            stored_hash = bytes.fromhex(line["hash"])
            if not isinstance(record, dict) or record.get("sequence") != sequence:
                chain.finding = chain.finding or Finding(sequence, "event record is missing or misnumbered")
                continue
            chain.feed(sequence, canonical_bytes(record), bytes.fromhex(line["previous_hash"]), stored_hash)
            proof = line.get("proof")
            if proof is not None:
                problem = _proof_problem(proof, sequence, stored_hash, checkpoints)
                if problem:
                    findings.append(Finding(sequence, problem))
                else:
                    proven += 1
        else:
            raise ValueError(f"line {number}: unknown kind {kind!r}")
    if header is None or chain is None:
        raise ValueError("no export header line")
    last_covered = max((int(c["last_sequence"]) for c in checkpoints.values()), default=0)
    findings.append(
        chain.finish(max(min(last_covered, int(header["to_sequence"])), chain.expected_sequence - 1))
    )
    return Verdict(first_finding(findings), events, proven, len(checkpoints))


def _proof_problem(
    proof: dict[str, Any], sequence: int, leaf: bytes, checkpoints: dict[int, dict[str, Any]]
) -> str:
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
        return 2
    summary = f"{verdict.events} events, {verdict.proven} proven by {verdict.checkpoints} signed checkpoints"
    if verdict.finding is not None:
        print(f"TAMPERED at sequence {verdict.finding.sequence}: {verdict.finding.problem} ({summary})")
        return 1
    print(f"INTACT: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
