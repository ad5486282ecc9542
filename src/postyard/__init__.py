"""Postyard: lifecycle messaging routed to your own SMTP servers."""
