"""Stage one (frozen-LPM extraction) and stage two (side-network training) and what they need."""
