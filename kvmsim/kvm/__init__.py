"""The KVM core."""
