"""Mail: building messages, rendering templates and speaking SMTP."""
