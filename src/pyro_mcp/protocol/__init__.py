"""The guest protocol both sides share: framing and parameter rules; stdlib only."""
