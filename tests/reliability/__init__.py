"""The reliability and security suite: faults and hostile input against the real daemon."""
