"""facestudy.data"""
