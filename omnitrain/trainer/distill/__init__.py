"""Distillation of a many-step flow-matching teacher into a few-step student (omnitrain distill)."""
