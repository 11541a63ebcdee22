"""stereo"""
