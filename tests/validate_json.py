#!/usr/bin/env python3
"""Validates JSON documents against the repository's schemas (schemas/*.schema.json) with Python's
jsonschema (Draft 2020-12), for the tests (tests/it/common/schema.rs).

Reads one request a line on stdin, {"schema": NAME, "document": DOC}, and answers each with one
line: the JSON string "ok", or the errors found, each as "<pointer>: <message>". NAME is a schema
file's stem (step_context, step_result, build_secret_set), or "properties" for a properties
document (step_context's $defs/properties). Checks the schemas themselves first.
"""
import json
import pathlib
import sys

from jsonschema import Draft202012Validator

ROOT = pathlib.Path(__file__).resolve().parent.parent / "schemas"


def validators():
    found = {}
    for path in sorted(ROOT.glob("*.schema.json")):
        schema = json.loads(path.read_text())
        Draft202012Validator.check_schema(schema)
        found[path.name[: -len(".schema.json")]] = Draft202012Validator(schema)
    context = json.loads((ROOT / "step_context.schema.json").read_text())
    found["properties"] = Draft202012Validator({"$defs": context["$defs"], "$ref": "#/$defs/properties"})
    return found


def pointer(path):
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


def main():
    known = validators()
    for line in sys.stdin:
        request = json.loads(line)
        validator = known.get(request["schema"])
        if validator is None:
            answer = "no schema named " + repr(request["schema"])
        else:
            errors = sorted(validator.iter_errors(request["document"]), key=lambda e: list(map(str, e.absolute_path)))
            answer = "; ".join(pointer(e.absolute_path) + ": " + e.message for e in errors) or "ok"
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


main()
