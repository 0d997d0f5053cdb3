"""The CLI's ``--set`` arguments, for tests/test_bad_input_catalogue.py and
tests/test_notices_and_launcher.py."""

from typing import List


def _sets(settings: List[str]) -> List[str]:
    return [a for s in settings for a in ("--set", s)]
