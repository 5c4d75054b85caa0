// dptrain command line: train, eval, predict (and bench, inspect). Filled in by the CLI work.
#include <cstdio>

int main() {
  std::puts("dptrain: under construction");
  return 1;
}
