// The reference definition of each activation type, shared by the activation op and the
// fully_connected epilogue.
#pragma once

#include <functional>
#include <string>

#include "ir/attributes.h"

namespace kiln {

// f(x) of activation `type` with the layer's alpha / beta / threshold attributes (activation op
// defaults). Types were validated by the schema.
std::function<double(double)> reference_activation(const std::string& type, const Attributes& attrs);

}  // namespace kiln
