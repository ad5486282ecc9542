"""Placeholder router, filled in by the campaigns issue."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
