#!/usr/bin/env python3
"""test_summary.py — the counts scripts/test.sh prints, read from ctest's
JUnit file (ctest --output-junit), not guessed.

  test_summary.py stage TOTALS STAGE JUNIT   one ctest stage: its tests passed,
      failed and skipped, each skip with its reason (the test's "SKIP..." lines),
      each failure with its first error lines, the CPU levels the tests ran at;
      adds the counts to the TOTALS file (JSON, created if absent)
  test_summary.py add TOTALS STAGE PASSED FAILED   counts of a stage without
      JUnit (the fuzz targets)
  test_summary.py total TOTALS   the closing line, "summary: N passed, N failed,
      N skipped"; exit status 1 if anything failed

A test counts as skipped if ctest did not run it to a pass (exit 77, the
SKIP_RETURN_CODE) or if it passed with a part skipped ("SKIP" lines, from
tests/test.h, tests/skip.sh or tests/serve/test_api.py): such a test is
listed with the reasons, so a skipped input is never silent.
"""
import json
import os
import re
import sys
import xml.etree.ElementTree as ET


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return {"passed": 0, "failed": 0, "skipped": 0}


def save(path, t):
    with open(path, "w") as f:
        json.dump(t, f)


def stage(totals, name, junit):
    root = ET.parse(junit).getroot()
    cases = root.iter("testcase")
    passed, failed, skipped = [], [], []
    levels = {}
    for c in cases:
        tname = c.get("name")
        out = "".join(e.text or "" for e in c.iter("system-out"))
        lines = out.splitlines()
        skips = [ln.strip() for ln in lines if ln.lstrip().startswith("SKIP")]
        for ln in lines:
            m = re.match(r"^CPU levels?: (.+)$", ln.strip())
            if m:
                levels[tname] = m.group(1)
        status = c.get("status")
        if status == "fail" or c.find("failure") is not None:
            errs = [ln.strip() for ln in lines if re.search(r"CHECK failed|FAIL|error|refused", ln)]
            failed.append((tname, errs[:4]))
        elif status in ("notrun", "disabled") or c.find("skipped") is not None or skips:
            if not skips:
                sk = c.find("skipped")
                skips = [(sk.get("message") if sk is not None else None) or "not run"]
            skipped.append((tname, skips))
        else:
            passed.append(tname)
    print(f"-- {name}: {len(passed) + len(failed) + len(skipped)} tests")
    for t, why in skipped:
        print(f"   skipped {t}: " + "; ".join(why))
    for t, errs in failed:
        print(f"   failed  {t}" + (": " + " | ".join(errs) if errs else ""))
    if levels:
        lv = "; ".join(f"{t}: {v}" for t, v in sorted(levels.items()))
        default = os.environ.get("XDS_CPU") or next(iter(levels.values())).split()[-1]
        print(f"   CPU levels: {lv}; every other test ran at the default level ({default})")
    print(f"{name}: {len(passed)} passed, {len(failed)} failed, {len(skipped)} skipped")
    add(totals, name, len(passed), len(failed), len(skipped))


def add(totals, name, p, f, s=0):
    t = load(totals)
    t["passed"] += p
    t["failed"] += f
    t["skipped"] += s
    save(totals, t)


def total(totals):
    t = load(totals)
    print(f"summary: {t['passed']} passed, {t['failed']} failed, {t['skipped']} skipped")
    return 1 if t["failed"] else 0


def main(argv):
    if len(argv) == 5 and argv[1] == "stage":
        stage(argv[2], argv[3], argv[4])
        return 0
    if len(argv) == 6 and argv[1] == "add":
        add(argv[2], argv[3], int(argv[4]), int(argv[5]))
        print(f"{argv[3]}: {argv[4]} passed, {argv[5]} failed")
        return 0
    if len(argv) == 3 and argv[1] == "total":
        return total(argv[2])
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
