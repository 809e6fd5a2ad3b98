"""facestudy.faceworld"""
