"""edgebridge.export"""
