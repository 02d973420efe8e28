from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor

class SensitivityCategory(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SENSITIVITY_CATEGORY_UNSPECIFIED: _ClassVar[SensitivityCategory]
    SENSITIVITY_CATEGORY_HIV: _ClassVar[SensitivityCategory]
    SENSITIVITY_CATEGORY_MENTAL_HEALTH: _ClassVar[SensitivityCategory]
    SENSITIVITY_CATEGORY_REPRODUCTIVE_HEALTH: _ClassVar[SensitivityCategory]
    SENSITIVITY_CATEGORY_SUBSTANCE_USE: _ClassVar[SensitivityCategory]
SENSITIVITY_CATEGORY_UNSPECIFIED: SensitivityCategory
SENSITIVITY_CATEGORY_HIV: SensitivityCategory
SENSITIVITY_CATEGORY_MENTAL_HEALTH: SensitivityCategory
SENSITIVITY_CATEGORY_REPRODUCTIVE_HEALTH: SensitivityCategory
SENSITIVITY_CATEGORY_SUBSTANCE_USE: SensitivityCategory
