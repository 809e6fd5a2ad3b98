"""facestudy.kprpe"""
