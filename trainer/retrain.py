"""Retrain a logged trial without its weak features (issue 3; a stub until then)."""

from __future__ import annotations

import argparse

from trainer.errors import InputError


def main(args: argparse.Namespace) -> int:
    raise InputError("retrain is not available yet")
