"""detection3d"""
