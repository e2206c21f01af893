"""edgebridge.sim"""
