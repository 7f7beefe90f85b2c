"""The chart's alert rules as a Prometheus rule file, and a check that promtool's unit
tests cover every alert both ways.

  rules.py extract < manifests.yaml > rules.yml
      the spec of the PrometheusRule in `helm template` output, i.e. a rule file that
      promtool and Prometheus load
  rules.py coverage rules.yml rules-test.yml
      fails unless every alert of rules.yml has, in rules-test.yml, a case where it
      fires (non-empty exp_alerts) and one where it must not (exp_alerts: [])
"""

import sys

import yaml


def extract():
    rules = [d for d in yaml.safe_load_all(sys.stdin) if d and d.get("kind") == "PrometheusRule"]
    if len(rules) != 1:
        sys.exit(f"rules.py: expected one PrometheusRule in the manifests, found {len(rules)}")
    yaml.safe_dump({"groups": rules[0]["spec"]["groups"]}, sys.stdout, sort_keys=False, width=1000)


def coverage(rules_path, tests_path):
    with open(rules_path, encoding="utf-8") as f:
        alerts = {r["alert"] for g in yaml.safe_load(f)["groups"] for r in g["rules"] if "alert" in r}
    with open(tests_path, encoding="utf-8") as f:
        tests = yaml.safe_load(f)["tests"]
    fires, quiet = set(), set()
    for test in tests:
        for case in test.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
    problems = [f"{a}: no case where it fires" for a in sorted(alerts - fires)]
    problems += [f"{a}: no case where it must stay quiet" for a in sorted(alerts - quiet)]
    problems += [f"{a}: tested but not a rule" for a in sorted((fires | quiet) - alerts)]
    if problems:
        sys.exit("rules.py: " + tests_path + " does not cover the rules:\n  " + "\n  ".join(problems))
    print(f"rules.py: {len(alerts)} alerts, each tested firing and quiet")


if __name__ == "__main__":
    if sys.argv[1:2] == ["extract"]:
        extract()
    elif sys.argv[1:2] == ["coverage"] and len(sys.argv) == 4:
        coverage(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
