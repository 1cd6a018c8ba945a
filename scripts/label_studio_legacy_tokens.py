"""Turns on Label Studio's legacy API tokens (``Authorization: Token <key>``) in every
organization of a Label Studio data directory.

FiftyOne 1.22's Label Studio backend authenticates with ``label_studio_sdk.Client``, which
sends the legacy token; Label Studio >= 1.19 turns legacy tokens off in new organizations (the
server answers 401 "legacy token authentication has been disabled for this organization").
Run with Label Studio's own Python, on the data directory the server uses:

    LABEL_STUDIO_BASE_DATA_DIR=<dir> .venv-label-studio/bin/python \
        scripts/label_studio_legacy_tokens.py

The same switch is in Label Studio's UI: Organization -> API Tokens Settings.
"""

import os
import sys
from pathlib import Path

import label_studio

sys.path.insert(0, str(Path(label_studio.__file__).parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings.label_studio")

import django  # noqa: E402

django.setup()

from jwt_auth.models import JWTSettings  # noqa: E402
from organizations.models import Organization  # noqa: E402

organizations = list(Organization.objects.all())
if not organizations:
    sys.exit("no organization yet: start the server once with a user first")
for organization in organizations:
    settings, _ = JWTSettings.objects.get_or_create(organization=organization)
    settings.legacy_api_tokens_enabled = True
    settings.save()
    print(f"legacy API tokens enabled in organization {organization.id}")
