"""Fail CI when the test report shows skipped tests or no tests against real services."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET


def main(path: str) -> int:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = sum(int(s.get("tests", 0)) for s in suites)
    skipped = sum(int(s.get("skipped", 0)) for s in suites)
    failed = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
    ran = {(c.get("classname", ""), c.get("name", "")) for c in root.iter("testcase")
           if c.find("skipped") is None}
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m",
         "redis or prometheus or haproxy or nginx or unleash or chromium"],
        capture_output=True, text=True, check=False).stdout
    real = [line for line in collected.splitlines() if "::" in line]
    print(f"report: {total} tests, {failed} failed, {skipped} skipped; "
          f"{len(real)} need a real service (redis, prometheus, haproxy, nginx, unleash, chromium)")
    if total == 0 or failed or skipped:
        print("CI: tests failed, were skipped, or none ran", file=sys.stderr)
        return 1
    if not real or len(ran) < len(real):
        print("CI: the real-service tests did not all run", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
