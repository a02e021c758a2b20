"""``gradoctor audit``: unstable numerical patterns and precision-sensitive layers, found on a
recipe's real training steps before anything goes non-finite (``api.audit``)."""
