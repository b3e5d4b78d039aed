"""Pure domain logic: series roles, completeness, slice pairing, job states. No I/O here."""
