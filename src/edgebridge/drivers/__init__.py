"""edgebridge.drivers"""
