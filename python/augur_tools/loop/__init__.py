"""The closed loop: train, retrain and push, the A/B report, the fleet controller."""
