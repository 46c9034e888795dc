"""File formats below train/ and engines/: checkpoints, exports, and the agreement on a failed write."""
