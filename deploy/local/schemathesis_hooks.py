"""schemathesis hooks of `make test`'s fuzz run (deploy/local/fuzz.sh).

The API takes a population only as a JSON integer, and refuses `1.0` (see README,
Validation). JSON Schema 2020-12, which OpenAPI 3.1 uses, counts `1.0` as an integer,
so the document cannot state that rule, and schemathesis sends whole floats as valid
integers. This hook sends them as the integers they stand for instead.
"""

import schemathesis


def _whole_floats_as_integers(value):
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_whole_floats_as_integers(item) for item in value]
    if isinstance(value, dict):
        return {key: _whole_floats_as_integers(item) for key, item in value.items()}
    return value


@schemathesis.hook
def map_body(context, body):
    return _whole_floats_as_integers(body)
