// Calls f(std::integral_constant<int, GN>) for GN = gn in 1..8, so a kernel templated on the number of
// query heads it keeps in registers can be chosen at run time. Included inside each ISA's namespace.
#pragma once
#include <type_traits>

template <class F>
inline void with_gn(int gn, F&& f) {
  switch (gn) {
    case 8: f(std::integral_constant<int, 8>{}); break;
    case 7: f(std::integral_constant<int, 7>{}); break;
    case 6: f(std::integral_constant<int, 6>{}); break;
    case 5: f(std::integral_constant<int, 5>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    default: f(std::integral_constant<int, 1>{}); break;
  }
}
