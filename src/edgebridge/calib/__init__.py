"""edgebridge.calib"""
