/* A shared library without the external delegate entry points (for the tests' fallback case). */
int not_a_delegate(void) { return 42; }
