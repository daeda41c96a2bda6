#!/usr/bin/env python3
"""Validate JSON instances against a JSON Schema with the `jsonschema` package.

An independent check of `warren schema` (tests/contracts.rs runs it):

    scripts/jsonschema-check.py SCHEMA.json < cases.json

reads a JSON array of instances on stdin, checks SCHEMA against the draft-07
meta-schema, and prints one JSON object per instance: `valid` (patterns and
types only, as `python3 -m jsonschema` checks) and `valid_with_formats` (also
`format`, where the package has a checker for it), with the first error.
Exits 2 when the package is missing or the schema is not a draft-07 schema.
"""

import json
import sys

try:
    import jsonschema
except ImportError:
    sys.exit("the Python package jsonschema is missing: pip install jsonschema")


def first_error(validator, instance):
    error = next(iter(validator.iter_errors(instance)), None)
    if error is None:
        return None
    return "/".join(str(p) for p in error.absolute_path) + ": " + error.message[:200]


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        schema = json.load(f)
    cls = jsonschema.Draft7Validator
    if schema.get("$schema") != "http://json-schema.org/draft-07/schema#":
        sys.exit(f"not a draft-07 schema: $schema is {schema.get('$schema')!r}")
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as e:
        sys.exit(f"invalid draft-07 schema: {e.message}")
    plain = cls(schema)
    formats = cls(schema, format_checker=cls.FORMAT_CHECKER)
    for instance in json.load(sys.stdin):
        print(json.dumps({
            "valid": plain.is_valid(instance),
            "valid_with_formats": formats.is_valid(instance),
            "error": first_error(formats, instance),
        }))


if __name__ == "__main__":
    main()
