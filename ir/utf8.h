// Names in the IR are UTF-8 text: tensor, layer, op and attribute names and string attribute
// values reach Python as str and are quoted in messages, so bytes that are not UTF-8 (a corrupt
// plan, a bytes object passed as a name) are refused where they enter: Network construction and
// the plan parser.
#pragma once

#include <string>
#include <string_view>

namespace kiln {

// True when `s` is well-formed UTF-8 (RFC 3629: no overlong forms, surrogates or code points
// above U+10FFFF).
bool is_valid_utf8(std::string_view s);

// `s` for a message: valid UTF-8 sequences as they are, every other byte as \xNN.
std::string printable(std::string_view s);

// Throws kiln::Error when `s` is not UTF-8: "<what> "a\xff" is not valid UTF-8 ...".
void check_utf8(std::string_view s, const std::string& what);

}  // namespace kiln
